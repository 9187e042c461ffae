"""`selfmoa operator`: run the operator namespaced or cluster-wide.

Only argparse is imported at module level: `--help` loads neither Kopf nor anything heavy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from selfmoa.api.exits import Exit, Parser

#: Threads for blocking store I/O, shared by every run's reconcile.
IO_THREADS = 32


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="selfmoa operator",
        description="Run the Self-MOA Kubernetes operator (reconciles AlignmentRuns).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="namespace to serve (repeatable)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace")
    p.add_argument(
        "--config", help="operator config YAML (default /etc/selfmoa/config.yaml if it exists)"
    )
    p.add_argument(
        "--health-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)"
    )
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics (0: off)")
    p.add_argument(
        "--standalone", action="store_true", help="no peering with other operator instances"
    )
    p.add_argument("--resync-seconds", type=float, default=60.0, help="safety-net reconcile period")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not args.namespace and not args.all_namespaces:
        print(
            "selfmoa operator: error: give --namespace NS (repeatable) or --all-namespaces",
            file=sys.stderr,
        )
        return Exit.BAD_INPUT
    from selfmoa.controller.config import load_config

    try:
        config = load_config(args.config)
    except ValueError as e:
        print(f"selfmoa operator: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    try:
        asyncio.run(serve(args, config))
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    return Exit.OK


async def serve(args: Any, config: Any, *, stop_flag: Any = None) -> None:
    import kopf

    from selfmoa.controller.handlers import register
    from selfmoa.controller.kube import Kube
    from selfmoa.controller.runtime import Runtime

    # Store reads and writes run in threads (boto3 blocks); asyncio's default pool (cores + 4)
    # would queue fifty runs' reads behind each other while each thread waits on the network.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="selfmoa-io")
    )
    rt: Runtime = Runtime(
        config=config, kube=Kube(lambda: rt.connection), resync_seconds=args.resync_seconds
    )
    registry = kopf.OperatorRegistry()
    # Exact namespaces need no namespace scanning (and no RBAC for listing namespaces).
    register(registry, rt, scanning=False)
    await kopf.operator(
        registry=registry,
        standalone=args.standalone,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz"
        if args.health_port
        else None,
        stop_flag=stop_flag,
    )
