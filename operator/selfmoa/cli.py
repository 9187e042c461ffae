"""`selfmoa`: the command line.

    selfmoa run FILE [--store URI]        the whole loop on this machine (resumable)
    selfmoa validate FILE                 check a run file against the spec
    selfmoa stage NAME --run-uri URI -k K one stage (what the operator's Jobs run)
    selfmoa operator ...                  the Kubernetes operator
    selfmoa serve --model M               an OpenAI-compatible server (CPU clusters, tests)
    selfmoa adapter-agent --run-uri URI   beside a server: loads the run's adapters into it
    selfmoa crd [--output PATH]           write the CustomResourceDefinition
    selfmoa export RUN_URI --out DIR      the aligned model: adapter or merged, with a card
    selfmoa fetch --hub REPO[@REV] DIR    pre-seed a model cache (and the init containers' fetch)
    selfmoa labels export|score RUN_URI   human labels for the judges (1-5 safety, helpfulness)

Bad input ends with one line on stderr and exit code 2; a failed stage with exit code 1; an
outage of the environment (a store or an endpoint not answering) with 75, retryable (the table is
`selfmoa.api.exits`). Heavy libraries (torch, transformers, kopf) load only in the command that
needs them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfmoa.api.exits import Exit, Parser

#: Commands that parse their own flags (their --help must reach them): name -> (help, module
#: with `main(argv) -> int`).
DELEGATED: dict[str, tuple[str, str]] = {
    "operator": ("run the Kubernetes operator", "selfmoa.controller.entry"),
    "serve": ("serve a model over an OpenAI-compatible HTTP API", "selfmoa.engines.server"),
    "adapter-agent": (
        "beside a server: load the run's LoRA adapters into it (a sidecar)",
        "selfmoa.engines.agent.command",
    ),
    "crd": ("write the CustomResourceDefinition generated from the spec", "selfmoa.api.crd"),
    "export": (
        "export a run's aligned model (adapter or merged) with a model card",
        "selfmoa.export.command",
    ),
    "fetch": (
        "fetch models or a run's files into a local directory (pre-seeding a model cache)",
        "selfmoa.store.fetch_command",
    ),
    "labels": (
        "human labels: export answers for a person to score, then measure every judge",
        "selfmoa.run.labels_command",
    ),
}


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from selfmoa.api import stage_container

    p = Parser(
        prog="selfmoa", description="Self-MOA: closed-loop safety alignment with weak supervision."
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    _run_arguments(
        sub.add_parser(
            "run",
            help="run (or resume) the whole loop on this machine",
            description=(
                "Run the Self-MOA loop of an AlignmentRun file on this machine. Running the same "
                "command again resumes at the first unfinished stage."
            ),
        )
    )
    v = sub.add_parser(
        "validate",
        help="check a run file",
        description="Validate an AlignmentRun file against the spec.",
    )
    v.add_argument("file")
    _stage_arguments(
        sub.add_parser(
            "stage",
            help="run one stage (used by the operator's Jobs)",
            formatter_class=argparse.RawTextHelpFormatter,
            description=(
                "Run one stage of one iteration against the run's artifact store. The spec comes "
                f"from\n--spec, the {stage_container.SPEC_ENV} environment variable (JSON), or the run's "
                "run.json."
            ),
        )
    )
    for name, (helptext, _) in DELEGATED.items():
        d = sub.add_parser(name, help=helptext, add_help=False)
        d.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _run_arguments(r: argparse.ArgumentParser) -> None:
    """The flags of `selfmoa run`."""
    r.add_argument("file", help="AlignmentRun YAML file")
    r.add_argument(
        "--store",
        help="artifact store URI (file://PATH, a path, or s3://BUCKET/PREFIX); overrides spec.storage.uri",
    )
    r.add_argument("--name", help="run name (default: metadata.name)")
    r.add_argument(
        "--namespace",
        help="namespace part of the artifact path (default: metadata.namespace or 'default')",
    )
    r.add_argument(
        "--quiet", "-q", action="store_true", help="no live progress, only the final table"
    )
    r.add_argument(
        "--fresh",
        action="store_true",
        help=(
            "start again: delete what an earlier run left at the same store path first "
            "(default: resume it, saying how many stages are reused)"
        ),
    )


def _stage_arguments(s: argparse.ArgumentParser) -> None:
    """The flags of `selfmoa stage`."""
    s.add_argument("name", metavar="NAME", help="the stage; one of:\n" + _stage_lines())
    s.add_argument("--run-uri", required=True, help="the run's root: <storage>/<namespace>/<run>")
    s.add_argument(
        "--iteration", "-k", type=int, required=True, help="iteration (0 = the starting point)"
    )
    s.add_argument(
        "--parent",
        type=int,
        help="iteration whose adapter to start from (default: from the metrics so far)",
    )
    s.add_argument("--spec", help="AlignmentRun or spec file (YAML/JSON)")


def _stage_lines() -> str:
    from selfmoa.run.stage_table import STAGES

    return "\n".join(f"  {s.name:<9} {s.description}" for s in STAGES)


def _version() -> str:
    from selfmoa import __version__

    return f"selfmoa {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    # Deprecation notices of the ML libraries are for us, not for someone running an alignment.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "stage":
            return cmd_stage(args)
    except UsageError as e:
        return _fail(str(e), Exit.BAD_INPUT)
    except KeyboardInterrupt:
        print("\nselfmoa: interrupted; run the same command again to resume", file=sys.stderr)
        return Exit.INTERRUPTED
    raise AssertionError(args.command)


def _delegate(command: str, rest: list[str]) -> int:
    # Imported only when asked for: `selfmoa run` never loads the operator, and back.
    module = importlib.import_module(DELEGATED[command][1])
    return int(module.main(rest))


def _fail(message: str, code: int) -> int:
    print(f"selfmoa: error: {message}", file=sys.stderr)
    return code


def _load(path: str, *, named: str | None = None) -> Any:
    """The run file, validated as the cluster will see it; `named`: the flag that may give its
    name instead (None: the file must name itself, as `kubectl apply` requires)."""
    from selfmoa.api.loader import SpecError, load_run

    try:
        run = load_run(path)
    except SpecError as e:
        raise UsageError(str(e)) from None
    if not run.metadata.get("name") and named != "given":
        hint = f", or pass {named}" if named else ""
        raise UsageError(
            f"{path}: metadata.name: required (kubectl apply refuses an object without one){hint}"
        )
    return run


def cmd_validate(args: argparse.Namespace) -> int:
    from selfmoa.engines.capacity import gpu_errors, gpu_warnings, memory_errors

    run = _load(args.file)
    errors = [*gpu_errors(run.spec), *memory_errors(run.spec)]
    if errors:
        # One line, as for every other bad field; the count says there are more.
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"spec.{errors[0]}{more}")
    for warning in gpu_warnings(run.spec):
        print(f"selfmoa: warning: {warning}", file=sys.stderr)
    print(
        f"{args.file}: ok (AlignmentRun {run.namespace}/{run.name}, {run.spec.iterations} iteration(s))"
    )
    return Exit.OK


def cmd_run(args: argparse.Namespace) -> int:
    from selfmoa.api.exits import Unavailable, exit_for
    from selfmoa.api.loader import SpecError
    from selfmoa.local.console import RichDisplay, print_summary, write_report
    from selfmoa.local.executor import StageFailed, run_local
    from selfmoa.store import StoreError

    run = _load(args.file, named="given" if args.name else "--name")
    if args.name:
        run.metadata["name"] = args.name
    if args.namespace:
        run.metadata["namespace"] = args.namespace
    storage = _store_uri(args.store) if args.store else None
    display = RichDisplay(quiet=args.quiet)
    try:
        with display:
            result = run_local(
                run, storage_uri=storage, display=display, report=write_report, fresh=args.fresh
            )
    except (SpecError, StoreError, Unavailable) as e:
        return _fail(str(e), exit_for(e))
    except StageFailed as e:
        return _fail(str(e), e.code)
    print_summary(run, result)
    return Exit.OK if result.status.phase.value == "Succeeded" else Exit.FAILED


def _store_uri(value: str) -> str:
    from selfmoa.api.infra import bucket_problem

    if value.startswith("s3://"):
        problem = bucket_problem(value.removeprefix("s3://").partition("/")[0])
        if problem:
            raise UsageError(f"--store: {problem}")
        return value
    if value.startswith("file://"):
        return value
    if "://" in value:
        raise UsageError(f"--store: unsupported scheme in {value!r} (use file:// or s3://)")
    return f"file://{Path(value).expanduser().resolve()}"


def _given_run(args: argparse.Namespace) -> Any:
    """The run a stage was handed: --spec, or the contract's spec variable; None: read run.json."""
    from selfmoa.api import stage_container
    from selfmoa.api.loader import SpecError, parse_run

    try:
        if args.spec:
            # A stage's spec file may be a bare spec: the run's name comes from --run-uri.
            return _load(args.spec, named="given")
        obj = stage_container.spec_from_env()
        if obj is not None:
            return parse_run(obj if "spec" in obj else {"spec": obj})
    except json.JSONDecodeError as e:
        raise UsageError(f"{stage_container.SPEC_ENV}: not valid JSON ({e.msg})") from None
    except SpecError as e:
        raise UsageError(str(e)) from None
    return None


def _stage_spec(args: argparse.Namespace, given: Any, store: Any) -> Any:
    """The spec a stage runs with; a run started by its first Job gets its run.json here."""
    from selfmoa.api import stage_container
    from selfmoa.api.loader import parse_run
    from selfmoa.run import layout
    from selfmoa.run.document import run_document

    if given is not None:
        if not store.exists(layout.RUN_JSON):
            parts = args.run_uri.rstrip("/").rsplit("/", 2)
            given.metadata.setdefault("name", parts[-1])
            given.metadata.setdefault("namespace", parts[-2] if len(parts) > 2 else "default")
            store.write_json(layout.RUN_JSON, run_document(given))
        return given.spec
    try:
        return parse_run(store.read_json(layout.RUN_JSON)).spec
    except FileNotFoundError:
        raise UsageError(
            f"{args.run_uri}: no run.json; pass --spec or {stage_container.SPEC_ENV}"
        ) from None


def cmd_stage(args: argparse.Namespace) -> int:
    from selfmoa.api import stage_container
    from selfmoa.api.exits import Unavailable, exit_for
    from selfmoa.api.loader import SpecError
    from selfmoa.run import stage_table
    from selfmoa.stages import StageError
    from selfmoa.store import StoreError

    if args.name not in stage_table.NAMES:
        raise UsageError(f"unknown stage '{args.name}' (one of: {', '.join(stage_table.NAMES)})")
    if args.iteration < 0:
        raise UsageError("--iteration: must be 0 or more")
    given = _given_run(args)
    try:
        manifest, ran = _run_stage(args, given)
    except UsageError as e:
        # In a Pod the operator reads the termination message: bad input is said there too.
        stage_container.write_termination_message(str(e))
        raise
    except (SpecError, StoreError, StageError, Unavailable) as e:
        stage_container.write_termination_message(str(e))
        return _fail(str(e), exit_for(e))
    except Exception as e:  # a stage bug: say it in one line, keep the traceback in the log
        import traceback

        traceback.print_exc()
        msg = f"stage {args.name} failed: {type(e).__name__}: {e}".splitlines()[0]
        stage_container.write_termination_message(msg)
        return _fail(msg, Exit.FAILED)
    state = "done" if ran else "already done (manifest exists), skipped"
    print(
        f"stage {args.name} of iteration {args.iteration}: {state} in {manifest.get('seconds', 0)}s"
    )
    return Exit.OK


def _run_stage(args: argparse.Namespace, given: Any) -> tuple[dict[str, Any], bool]:
    """Run the stage `args` name against the run's store: its manifest, and whether it ran
    (False: it was done already)."""
    from selfmoa.local.console import LogProgress
    from selfmoa.run import planner, stage_table
    from selfmoa.run import state as run_state
    from selfmoa.stages.runner import open_runner
    from selfmoa.store import open_store, open_store_for

    store = (
        open_store_for(args.run_uri, given.spec.storage)
        if given is not None
        else open_store(args.run_uri)
    )
    spec = _stage_spec(args, given, store)
    if args.iteration > spec.iterations:
        raise UsageError(
            f"--iteration: {args.iteration} is past spec.iterations ({spec.iterations})"
        )
    if (args.iteration, args.name) not in stage_table.stages_of_run(
        spec.iterations, reset=spec.safety_reset.enabled, export=spec.output is not None
    ):
        raise UsageError(f"stage '{args.name}' is not part of iteration {args.iteration}")
    parent = args.parent
    if parent is None:
        done = run_state.finished_stages(store, spec)
        parent = planner.parent_of(spec, run_state.read_metrics(store, done), args.iteration)
    with open_runner(spec, store) as runner:
        return runner.run(
            args.name,
            args.iteration,
            parent=parent,
            progress=LogProgress(f"iter {args.iteration} {args.name}"),
        )


if __name__ == "__main__":
    sys.exit(main())
