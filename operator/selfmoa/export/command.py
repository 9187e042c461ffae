"""`selfmoa export RUN_URI --out DIR`: the command line of `export_run`.

Progress goes to stderr, the one-line result to stdout. Bad input (no run there, an iteration
that was never evaluated, a bad URI, an --out in the way) is one line on stderr and exit code 2;
an export that could not be completed (a changed adapter, a failed upload) exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from selfmoa.api.exits import Exit, Parser, exit_for
from selfmoa.export.errors import ExportError, ExportFailed

PROG = "selfmoa export"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        usage=(
            f"{PROG} RUN_URI --out DIR [--merge] [--iteration K] [--force]\n"
            f"{' ' * 22}[--endpoint URL] [--region R] [--quiet]"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Export the aligned model of a run: the best accepted iteration's LoRA adapter (or\n"
            "--iteration K), or with --merge the base model with the adapter merged in, in\n"
            "Hugging Face layout with a model card (README.md) and a _manifest.json.\n\n"
            "The best accepted iteration is the one with the lowest held-out attack success\n"
            "rate among the starting point and the iterations the gate accepted. Each adapter\n"
            "file is checked against its stage's _manifest.json before it is used."
        ),
        epilog=(
            "examples:\n"
            "  selfmoa export ./runs/default/tiny --out ./tiny-aligned\n"
            "  selfmoa export s3://bucket/runs/ns/qwen --out ./qwen-merged --merge\n"
            "  selfmoa export file:///data/runs/ns/r --out s3://bucket/models/r --iteration 2"
        ),
    )
    p.add_argument("run_uri", metavar="RUN_URI", help="the run's root: <storage>/<namespace>/<run>")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (a path or file://) or s3://BUCKET/PREFIX; written whole or not at all",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="write the full model with the adapter merged in (loads the base model)",
    )
    p.add_argument(
        "--iteration",
        "-k",
        type=int,
        metavar="K",
        help="export iteration K (must be evaluated; 0 = the starting point) instead of the best",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--endpoint", metavar="URL", help="S3 endpoint (MinIO, moto, ...)")
    p.add_argument("--region", metavar="R", help="S3 region")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def _fail(message: str, code: int) -> int:
    line = " ".join(message.split())
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return code


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from selfmoa.export.core import export_run
    from selfmoa.store import StoreError

    try:
        result = export_run(
            args.run_uri,
            args.out,
            merge=args.merge,
            iteration=args.iteration,
            force=args.force,
            endpoint=args.endpoint,
            region=args.region,
            progress=None if args.quiet else _say,
        )
    except (ExportError, ExportFailed, StoreError) as e:
        # The class says the code (bad input 2, an outage in its cause 75, else 1).
        return _fail(str(e), exit_for(e))
    except OSError as e:
        return _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), Exit.FAILED)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no finished export was written", file=sys.stderr)
        return Exit.INTERRUPTED
    what = "merged model" if result.merged else "LoRA adapter"
    print(f"exported iteration {result.iteration} ({what}) to {result.out}: {result.why}")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
