"""`python -m selfmoa.store.fetch s3://bucket/model DEST`: the vLLM init container's model sync.

Runs in the worker image (which has the s3 extra); the endpoint and region come from the run's
spec in `SELFMOA_SPEC`, the credentials from the usual AWS environment variables.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m selfmoa.store.fetch s3://BUCKET/PREFIX DEST", file=sys.stderr)
        return 2
    from selfmoa.api import contract
    from selfmoa.store import open_store

    storage = (contract.spec_from_env() or {}).get("storage", {})
    store = open_store(
        args[0],
        endpoint=storage.get("endpoint"),
        region=storage.get("region"),
        timeout=storage.get("timeoutSeconds"),
    )
    store.download_dir("", Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
