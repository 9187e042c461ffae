"""`selfmoa labels`: a person scores held-out answers 1..5 by hand, and the labels then measure
every judge (the paper's human evaluation). The reading and writing of files and the command
line; what is computed lives in `labels`.

    selfmoa labels export RUN_URI --out FILE.csv [--iteration K ...] [--limit N] [--seed S]
    selfmoa labels score RUN_URI FILE.csv [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from selfmoa.api.exits import Exit, Parser, exit_for
from selfmoa.run import layout
from selfmoa.run.labels import (
    GOOD,
    INSTRUCTIONS,
    PROG,
    LabelsError,
    agreement,
    build_export,
    by_iteration,
    csv_text,
    first_answers,
    join,
    parse_labels,
    render,
    select_prompts,
)
from selfmoa.store import Store, StoreError, open_store

# ----------------------------------------------------------------------------- I/O


def _evaluated(store: Store) -> list[int]:
    pat = re.compile(rf"iter-(\d{{3,}})/evaluate/{re.escape(layout.MANIFEST)}")
    return sorted(int(m.group(1)) for key in store.list("iter-") if (m := pat.fullmatch(key)))


def _judgments(store: Store, k: int) -> list[dict[str, Any]]:
    where = f"{store.uri}/{layout.stage_file(k, 'evaluate', layout.JUDGMENTS)}"
    try:
        return store.read_jsonl(layout.stage_file(k, "evaluate", layout.JUDGMENTS))
    except FileNotFoundError:
        raise LabelsError(f"{where}: not found (no judgments for iteration {k})") from None
    except ValueError as e:
        raise LabelsError(f"{where}: not JSON lines ({e})") from None


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".csv":
        raise LabelsError(f"--out: {out} must end in .csv")
    md, key_path = out.with_suffix(".md"), out.with_suffix(".key.json")
    for p in (out, md, key_path):
        if p.exists() and not args.force:
            raise LabelsError(f"{p} exists (pass --force to replace it)")
    store = open_store(args.run_uri)
    done = _evaluated(store)
    if not done:
        raise LabelsError(f"{args.run_uri}: no evaluated iteration here (is it a run's root?)")
    iters = sorted(set(args.iteration or [done[0], done[-1]]))
    if stray := [k for k in iters if k not in done]:
        raise LabelsError(f"--iteration {stray[0]}: not evaluated (evaluated: {_ks(done)})")
    answers = {k: first_answers(_judgments(store, k)) for k in iters}
    prompts = select_prompts(answers, args.limit, args.seed)
    if not prompts:
        raise LabelsError(f"{args.run_uri}: no prompt answered in every iteration of {_ks(iters)}")
    rows, key = build_export(store.uri, answers, prompts, args.seed)
    out.write_text(csv_text(rows), encoding="utf-8", newline="")
    md.write_text(INSTRUCTIONS.format(csv=out.name, key=key_path.name), encoding="utf-8")
    doc = {"run": store.uri, "iterations": iters, "seed": args.seed, "ids": key}
    key_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows ({len(prompts)} prompts x iterations {_ks(iters)}) to {out}")
    print(f"instructions for the labeller: {md}; key (not for the labeller): {key_path}")
    return Exit.OK


def _ks(ks: Iterable[int]) -> str:
    return ", ".join(map(str, ks))


def _read_key(path: Path) -> dict[str, tuple[int, str]]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))["ids"]
        return {str(o): (int(v["iteration"]), str(v["judgment"])) for o, v in ids.items()}
    except FileNotFoundError:
        raise LabelsError(
            f"{path}: no key file beside the CSV (`{PROG} export` writes it)"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LabelsError(f"{path}: not a key file of `{PROG} export`") from None


def cmd_score(args: argparse.Namespace) -> int:
    path = Path(args.csv)
    if args.json and not Path(args.json).parent.is_dir():
        raise LabelsError(f"--json: no folder {Path(args.json).parent}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may save a byte-order mark
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text (save it as CSV UTF-8)") from None
    key = _read_key(path.with_suffix(".key.json"))
    labels, skipped = parse_labels(text, str(path))
    if not labels:
        raise LabelsError(f"{path}: no row has a score yet ({skipped} empty)")
    store = open_store(args.run_uri)
    needed = sorted({key[o][0] for o in labels if o in key})
    judgments = {k: {str(j["id"]): j for j in _judgments(store, k)} for k in needed}
    rows = join(labels, key, judgments)
    report = {"run": store.uri, "labelled": len(rows), "skipped": skipped}
    report |= {"threshold": GOOD, "judges": agreement(rows), "iterations": by_iteration(rows)}
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return Exit.OK


# ----------------------------------------------------------------------------- command line


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 1 or more")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Human labels for the judges: export held-out answers for a person to score "
        "1..5 (blind), then score every judge against the person's labels.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    e = sub.add_parser(
        "export",
        help="write held-out answers to a blind CSV for a person to label",
        description="Write the held-out answers of some iterations (default: the first and the "
        "last evaluated) to FILE.csv, shuffled and blind (no scores, kinds or iterations), with "
        "the instructions in FILE.md and the id mapping in FILE.key.json.",
    )
    e.add_argument("run_uri", metavar="RUN_URI", help="the run's root: <storage>/<namespace>/<run>")
    e.add_argument(
        "--out",
        required=True,
        metavar="FILE.csv",
        help="the CSV; FILE.md and FILE.key.json go beside it",
    )
    e.add_argument(
        "--iteration",
        "-k",
        type=int,
        action="append",
        metavar="K",
        help="an evaluated iteration (repeat; default: the first and the last)",
    )
    e.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="N prompts per iteration, round robin across kinds (default: all)",
    )
    e.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the selection and the order (default 0)",
    )
    e.add_argument("--force", action="store_true", help="replace an existing FILE.csv")
    s = sub.add_parser(
        "score",
        help="measure every judge against a labelled CSV",
        description="Read a labelled FILE.csv (and FILE.key.json beside it) and report each "
        "judge's and ensemble's accuracy, Cohen's kappa and mean absolute error against the "
        "person, and the person's attack success rate per iteration beside the judges'.",
    )
    s.add_argument("run_uri", metavar="RUN_URI", help="the run's root: <storage>/<namespace>/<run>")
    s.add_argument("csv", metavar="FILE.csv", help="the labelled CSV")
    s.add_argument("--json", metavar="OUT.json", help="also write the numbers as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return cmd_export(args) if args.command == "export" else cmd_score(args)
    except (LabelsError, StoreError) as e:
        message, code = str(e), exit_for(e)
    except OSError as e:
        message, code = f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), Exit.BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
