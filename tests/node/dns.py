"""The node tier's cluster DNS: Services' names to their ClusterIPs, and nothing else.

Debian ships no CoreDNS, and no registry image can be pulled here. This answers what CoreDNS's
`kubernetes` plugin answers for ClusterIP Services, `<service>.<namespace>.svc.<domain>` (A
records), from the API server's Service list, and NXDOMAIN for every other name: it never
forwards a query, so no pod's lookup leaves the node's network namespace.

    python3 dns.py --listen 10.200.0.1 --server https://10.200.0.1:6443 --ca ca.crt --token-file T

Standard library only, so any python3 runs it. UDP only: every answer fits in 512 bytes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request

A, AAAA = 1, 28
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3
TTL = 5


class Services:
    """ClusterIPs by (namespace, name), refreshed every second and on a miss."""

    def __init__(self, server: str, ca: str, token: str) -> None:
        self._url = f"{server}/api/v1/services"
        self._ctx = ssl.create_default_context(cafile=ca)
        self._token = token
        self._ips: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._fetched = 0.0

    def refresh(self) -> None:
        request = urllib.request.Request(
            self._url, headers={"Authorization": f"Bearer {self._token}"}
        )
        try:
            with urllib.request.urlopen(request, context=self._ctx, timeout=5) as response:
                items = json.load(response)["items"]
        except (OSError, ValueError) as e:
            print(f"dns: listing Services failed: {e}", file=sys.stderr, flush=True)
            return
        ips = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"]["clusterIP"]
            for s in items
            if s["spec"].get("clusterIP") not in (None, "", "None")
        }
        with self._lock:
            self._ips = ips
            self._fetched = time.monotonic()

    def lookup(self, namespace: str, name: str) -> str | None:
        with self._lock:
            ip = self._ips.get((namespace, name))
            stale = time.monotonic() - self._fetched > 0.2
        if ip is None and stale:  # a Service made since the last refresh
            self.refresh()
            with self._lock:
                ip = self._ips.get((namespace, name))
        return ip

    def poll(self, period: float = 1.0) -> None:
        while True:
            self.refresh()
            time.sleep(period)


def parse_question(packet: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, name, qtype, qclass, end offset of the question) of a one-question query."""
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("one question per query")
    labels, i = [], 12
    while packet[i]:
        n = packet[i]
        if n & 0xC0:
            raise ValueError("compressed question name")
        labels.append(packet[i + 1 : i + 1 + n].decode("ascii").lower())
        i += 1 + n
    qtype, qclass = struct.unpack("!HH", packet[i + 1 : i + 5])
    return ident, flags, ".".join(labels), qtype, qclass, i + 5


def answer(packet: bytes, services: Services, domain: str) -> bytes:
    try:
        ident, flags, name, qtype, _qclass, end = parse_question(packet)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return struct.pack(
            "!HHHHHH", int.from_bytes(packet[:2] or b"\0\0", "big"), 0x8000 | FORMERR, 0, 0, 0, 0
        )
    question = packet[12:end]
    parts = name.split(".")
    suffix = ["svc", *domain.split(".")]
    ip = None
    if len(parts) == 2 + len(suffix) and parts[2:] == suffix:
        ip = services.lookup(namespace=parts[1], name=parts[0])
    rd = flags & 0x0100
    # QR, AA (authoritative for the cluster domain), RD copied, RA clear (this never recurses).
    head = 0x8000 | 0x0400 | rd
    if ip is None:
        return struct.pack("!HHHHHH", ident, head | NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != A:  # the name exists, with no record of that type (AAAA: IPv4-only cluster)
        return struct.pack("!HHHHHH", ident, head | NOERROR, 1, 0, 0, 0) + question
    record = struct.pack("!HHHIH", 0xC00C, A, 1, TTL, 4) + ipaddress.IPv4Address(ip).packed
    return struct.pack("!HHHHHH", ident, head | NOERROR, 1, 1, 0, 0) + question + record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="address to answer on (port 53)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--server", required=True, help="API server URL")
    parser.add_argument("--ca", required=True, help="the API server's CA certificate")
    parser.add_argument("--token-file", required=True, help="a token that may list Services")
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args()
    with open(args.token_file) as f:
        services = Services(args.server, args.ca, f.read().strip())
    services.refresh()
    threading.Thread(target=services.poll, daemon=True).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.listen, args.port))
    print(f"dns: answering for *.svc.{args.domain} on {args.listen}:{args.port}", flush=True)
    while True:
        packet, peer = sock.recvfrom(512)
        sock.sendto(answer(packet, services, args.domain), peer)


if __name__ == "__main__":
    main()
