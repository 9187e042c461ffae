"""Model fetches in the worker image (it has the s3 extra): the vLLM init container's model sync,
and the pre-seeding of a shared model cache volume.

    selfmoa fetch s3://BUCKET/PREFIX DEST
        copy a model kept in a bucket into DEST;
    selfmoa fetch --hub ORG/NAME --revision REV --run-uri RUN_URI DEST
        the hub model from the run's model cache (`models/<key>/` in its store), downloading it
        from the hub into that cache first if no stage has yet: the server starts from the same
        copy the stages use, and the hub is asked once per run. The model lands in
        DEST/models/<key>/ (what the server's --model names);
    selfmoa fetch --hub ORG/NAME[@REV] [--revision REV] DEST
        pre-seed a model cache volume (`spec.modelCache`) mounted read-write at DEST: the hub
        model is downloaded into a temporary directory beside DEST/models/<key>/ and appears there
        by rename, complete, or not at all; a model already there is not downloaded again;
    selfmoa fetch --hub ORG/NAME --revision REV --check DEST
        only check that the model is in the volume at DEST (the vLLM init container of a run
        with a model cache volume): when it isn't, one line that names the seed command.

The endpoint, region and timeout come from the run's spec in `SELFMOA_SPEC`, the credentials from
the usual AWS environment variables, a gated model's token from HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfmoa.api.exits import Exit, Parser, exit_for


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _failed(message: str, code: int = Exit.FAILED) -> int:
    """One line on stderr and in the termination message (what the run's condition shows)."""
    from selfmoa.api import stage_container

    line = message.splitlines()[0] if message else "failed"
    _say(f"fetch: error: {line}")
    stage_container.write_termination_message(line)
    return code


def _parser() -> Parser:
    p = Parser(
        prog="selfmoa fetch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", help="s3://BUCKET/PREFIX of a model (without --hub)")
    p.add_argument("dest", help="local directory (with --hub: the model cache's root)")
    p.add_argument("--hub", help="a hub repo id, ORG/NAME or hf://ORG/NAME[@REV]")
    p.add_argument("--revision", help="the hub revision (default: main, or @REV of --hub)")
    p.add_argument("--run-uri", help="the run's root in its store (with --hub)")
    p.add_argument(
        "--check",
        action="store_true",
        help="with --hub: only check that the model is in the cache at DEST",
    )
    return p


def _check_flags(p: Parser, args: argparse.Namespace) -> None:
    """The flags that go together (a usage error, exit code 2, otherwise)."""
    if bool(args.hub) == bool(args.source):
        p.error("give s3://SOURCE DEST, or --hub REPO [--run-uri URI | --check] DEST")
    if args.check and args.run_uri:
        p.error("--check reads the model cache at DEST: it takes no --run-uri")
    if not args.hub and (args.check or args.run_uri or args.revision):
        p.error("--check, --run-uri and --revision go with --hub")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    _check_flags(p, args)
    from selfmoa.api import stage_container
    from selfmoa.store import Store, StoreError, open_store
    from selfmoa.store.model_cache import (
        looks_like_hub_id,
        materialize_hub,
        parse_hub_model,
        seeded_hub,
    )

    spec: Mapping[str, Any] = stage_container.spec_from_env() or {}
    storage = spec.get("storage", {})

    def store_at(uri: str) -> Store:
        return open_store(
            uri,
            endpoint=storage.get("endpoint"),
            region=storage.get("region"),
            timeout=storage.get("timeoutSeconds"),
        )

    try:
        if not args.hub:
            store_at(args.source).download_dir("", Path(args.dest))
            return 0
        repo, revision = parse_hub_model(args.hub, args.revision)
        if args.revision and "@" in args.hub and revision != args.revision:
            p.error(f"--hub {args.hub} and --revision {args.revision}: two revisions")
        if not looks_like_hub_id(repo):
            p.error(f"--hub: {repo!r} is not a hub repo id (ORG/NAME)")
        dest = Path(args.dest)
        if args.check:
            cache = spec.get("modelCache") or {}
            path = seeded_hub(
                repo, revision, dest, claim=cache.get("pvc"), sub_path=cache.get("subPath")
            )
        else:
            path = materialize_hub(
                repo,
                revision,
                cache_dir=dest,
                shared=store_at(args.run_uri) if args.run_uri else None,
                progress=_say,
            )
    except StoreError as e:
        return _failed(str(e), exit_for(e))
    except OSError as e:
        return _failed(str(e) or type(e).__name__)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
