"""The vLLM init container's model sync (runs in the worker image, which has the s3 extra).

    python -m selfmoa.store.fetch s3://BUCKET/PREFIX DEST
        copy a model kept in a bucket into DEST;
    python -m selfmoa.store.fetch --hub ORG/NAME --revision REV --run-uri RUN_URI DEST
        the hub model from the run's model cache (`models/<key>/` in its store), downloading it
        from the hub into that cache first if no stage has yet: the server starts from the same
        copy the stages use, and the hub is asked once per run. The model lands in
        DEST/models/<key>/ (what the server's --model names).

The endpoint, region and timeout come from the run's spec in `SELFMOA_SPEC`, the credentials from
the usual AWS environment variables, a gated model's token from HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfmoa.store.fetch", description=__doc__)
    p.add_argument("source", nargs="?", help="s3://BUCKET/PREFIX of a model (without --hub)")
    p.add_argument("dest", help="local directory")
    p.add_argument("--hub", help="a hub repo id, taken from the run's model cache")
    p.add_argument("--revision", default="main")
    p.add_argument("--run-uri", help="the run's root in its store (with --hub)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.hub) == bool(args.source) or (args.hub and not args.run_uri):
        p.error("give s3://SOURCE DEST, or --hub REPO --run-uri URI DEST")
    from selfmoa.api import contract
    from selfmoa.store import Store, open_store

    storage = (contract.spec_from_env() or {}).get("storage", {})

    def store_at(uri: str) -> Store:
        return open_store(
            uri,
            endpoint=storage.get("endpoint"),
            region=storage.get("region"),
            timeout=storage.get("timeoutSeconds"),
        )

    if args.hub:
        from selfmoa.store.model_cache import materialize_hub

        path = materialize_hub(
            args.hub,
            args.revision,
            cache_dir=Path(args.dest),
            shared=store_at(args.run_uri),
            progress=lambda line: print(line, file=sys.stderr),
        )
        print(path)
        return 0
    store_at(args.source).download_dir("", Path(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
