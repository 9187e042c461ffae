"""A small async Kubernetes REST client for the executor (aiohttp, which Kopf already uses).

It uses the same credentials Kopf logged in with (`kopf.ConnectionInfo`), counts its requests
(the benchmark reports API requests per iteration) and speaks JSON merge patch only.
"""

from __future__ import annotations

import asyncio
import builtins
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

MERGE_PATCH = "application/merge-patch+json"
#: Seconds one request may take (connect, send, the whole reply), and tries per request: an API
#: server that stops answering costs a reconcile at most `worst_case_seconds`, then the run says
#: so in its status (ApiUnavailable) and the reconcile is retried with back-off.
REQUEST_TIMEOUT_S = 60.0
ATTEMPTS = 3
#: Pause before the second and the third try.
RETRY_PAUSES_S = (0.2, 0.4)


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def collection(api_version: str, plural: str, namespace: str | None) -> str:
    """`/apis/batch/v1/namespaces/ns/jobs` (core group under `/api/v1`)."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def _write_temp(data: str | bytes) -> str:
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115 (kept for ssl)
    f.write(data.encode() if isinstance(data, str) else data)
    f.close()
    return f.name


def ssl_context(info: Any) -> ssl.SSLContext | bool:
    """An SSL context from a `kopf.ConnectionInfo` (CA, client cert, insecure)."""
    if not str(info.server).startswith("https"):
        return False
    if info.insecure:
        return False
    ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
    ctx = ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
    cert = info.certificate_path or (info.certificate_data and _write_temp(info.certificate_data))
    key = info.private_key_path or (info.private_key_data and _write_temp(info.private_key_data))
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


async def _body(resp: aiohttp.ClientResponse) -> Any:
    """JSON when the server says so; else the text. A real API server answers some errors (a 404
    for an API group it doesn't serve) with a plain-text body."""
    if resp.content_length == 0:
        return None
    if "json" in (resp.content_type or ""):
        return await resp.json(content_type=None)
    text = await resp.text()
    return text or None


class Kube:
    """JSON in, JSON out; 404 on get returns None, 409 on create returns (existing, False)."""

    def __init__(
        self, connection: Callable[[], Any], *, timeout: float = REQUEST_TIMEOUT_S
    ) -> None:
        #: Returns the current `kopf.ConnectionInfo` (re-read per session: tokens rotate).
        self._connection = connection
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self.requests: Counter[str] = Counter()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            info = self._connection()
            headers = {"Accept": "application/json"}
            auth = None
            if info.token:
                headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            elif info.username and info.password:
                auth = aiohttp.BasicAuth(info.username, info.password)
            self._server = str(info.server).rstrip("/")
            self._session = aiohttp.ClientSession(
                headers=headers,
                auth=auth,
                connector=aiohttp.TCPConnector(ssl=ssl_context(info), limit=32),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        session = self._open()
        self.requests[method] += 1
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in range(ATTEMPTS):
            try:
                async with session.request(
                    method, self._server + path, json=body, params=params, headers=headers
                ) as resp:
                    data = await _body(resp)
                    if resp.status == 401:
                        # Rotated token: reopen with fresh credentials next time.
                        await self.close()
                    return resp.status, data
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(RETRY_PAUSES_S[attempt])
        raise AssertionError("unreachable")

    def worst_case_seconds(self) -> float:
        """The longest one request can wait on an API server that stopped answering."""
        return ATTEMPTS * self.timeout + sum(RETRY_PAUSES_S)

    @staticmethod
    def _check(status: int, data: Any, what: str) -> None:
        if status >= 400:
            msg = data.get("message", "") if isinstance(data, dict) else str(data)
            raise KubeError(status, f"{what}: {msg}")

    async def get(self, path: str) -> dict[str, Any] | None:
        status, data = await self.request("GET", path)
        if status == 404:
            return None
        self._check(status, data, f"GET {path}")
        return dict(data)

    async def list(
        self, path: str, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Items matching `labels` (also filtered here: not every API server filters)."""
        return (await self.list_at(path, labels))[0]

    async def list_at(
        self, path: str, labels: Mapping[str, str] | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """`list`, and the resourceVersion the listing was taken at."""
        params = (
            {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        )
        status, data = await self.request("GET", path, params=params)
        self._check(status, data, f"LIST {path}")
        version = (data.get("metadata") or {}).get("resourceVersion")
        items = list(data.get("items") or [])
        if labels:
            items = [
                i
                for i in items
                if all(
                    (i.get("metadata", {}).get("labels") or {}).get(k) == v
                    for k, v in labels.items()
                )
            ]
        return items, (str(version) if version is not None else None)

    async def create(self, path: str, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created): an existing object of that name is returned, not an error."""
        status, data = await self.request("POST", path, body=obj)
        if status == 409:
            name = obj["metadata"]["name"]
            existing = await self.get(f"{path}/{name}")
            if existing is not None:
                return existing, False
        self._check(status, data, f"POST {path}")
        return dict(data), True

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any] | None:
        status, data = await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
        if status == 404:
            return None
        self._check(status, data, f"PATCH {path}")
        return dict(data)

    async def delete(self, path: str) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        status, data = await self.request("DELETE", path, body=body)
        if status == 404:
            return False
        self._check(status, data, f"DELETE {path}")
        return True
