"""`selfmoa adapter-agent`: the sidecar that puts a run's adapters on the server beside it.

The store's endpoint, region and timeout come from the run's spec in `SELFMOA_SPEC` (only its
`storage` part is read), or from --endpoint/--region, which win; credentials from the usual AWS
environment variables. Runs until SIGTERM/SIGINT, then withdraws its replica report.
`--check-ready` is the readiness probe: exit 0 once the server holds every desired adapter.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from selfmoa.api.exits import Exit, Parser, exit_for

PROG = "selfmoa adapter-agent"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=(
            "Keep the LoRA adapters of the OpenAI-compatible server beside this process equal to "
            "the run's desired set (serving/<model>/adapters.json in the run's store): download "
            "each adapter, check it against its stage's _manifest.json, load it; unload those no "
            "longer wanted. Reports to serving/<model>/replicas/<replica-id>.json."
        ),
    )
    p.add_argument("--run-uri", help="the run's root: <storage>/<namespace>/<run>")
    p.add_argument(
        "--server",
        default="http://127.0.0.1:8000",
        help="the server's base URL (default http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--dir",
        required=True,
        type=Path,
        help="where adapters are downloaded; the server must read it at the same path",
    )
    p.add_argument("--replica-id", help="this replica's name in the reports (the pod's name)")
    p.add_argument(
        "--model",
        default="selfmoa/tiny",
        help="the served model id, as the run names its policy (default selfmoa/tiny)",
    )
    p.add_argument("--endpoint", help="S3 endpoint URL (default: from SELFMOA_SPEC)")
    p.add_argument("--region", help="S3 region (default: from SELFMOA_SPEC)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between passes (default 2)")
    p.add_argument(
        "--check-ready",
        action="store_true",
        help="exit 0 when the server holds every desired adapter, 1 otherwise (a probe)",
    )
    return p


def _storage() -> dict[str, Any]:
    from selfmoa.api import stage_container

    try:
        spec = stage_container.spec_from_env() or {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{stage_container.SPEC_ENV}: not valid JSON ({e.msg})") from None
    storage = spec.get("spec", spec).get("storage") if isinstance(spec, dict) else None
    return storage if isinstance(storage, dict) else {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from selfmoa.engines.agent.protocol import SYNCED, ProtocolError

    if args.check_ready:
        # A probe every few seconds: nothing heavier than this file test.
        return Exit.OK if (args.dir / SYNCED).is_file() else Exit.FAILED
    missing = [f for f in ("run_uri", "replica_id") if not getattr(args, f)]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        return _fail(f"{flags}: required (unless --check-ready)")
    if args.interval <= 0:
        return _fail("--interval: must be above 0")
    from selfmoa.engines.agent.agent import AdapterAgent
    from selfmoa.store import StoreError, open_store

    try:
        storage = _storage()
        store = open_store(
            args.run_uri,
            endpoint=args.endpoint or storage.get("endpoint"),
            region=args.region or storage.get("region"),
            timeout=storage.get("timeoutSeconds"),
        )
        agent = AdapterAgent(
            store,
            server=args.server,
            directory=args.dir,
            replica=args.replica_id,
            model=args.model,
            interval=args.interval,
        )
    except StoreError as e:
        return _fail(str(e), exit_for(e))  # an outage at start: 75, the pod is restarted
    except (ValueError, ProtocolError, OSError) as e:
        return _fail(str(e))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    agent.run(stop)
    return Exit.OK


def _fail(message: str, code: int = Exit.BAD_INPUT) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
