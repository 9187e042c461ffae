"""LocalExecutor: the same plan as the operator, carried out on this machine.

`run_local` loops: read what is done from the store, ask the planner for the next action, run
that stage in-process, until the planner says the run is over. Everything it knows comes from the
store, so running it again after Ctrl-C or `kill -9` resumes at the first unfinished stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfmoa.api import exits
from selfmoa.api.base import is_gguf_model
from selfmoa.api.spec import (
    TINY_MODEL,
    AlignmentRun,
    AlignmentRunSpec,
    AlignmentRunStatus,
    SpecError,
)
from selfmoa.run import layout, outputs, planner, stage_models, stage_table
from selfmoa.run import state as run_state
from selfmoa.run.document import ensure_run_json
from selfmoa.run.identity import TakeOver
from selfmoa.run.metrics import Metrics
from selfmoa.stages.base import Progress, no_progress
from selfmoa.stages.runner import StageRunner, open_runner
from selfmoa.store import Store, StoreUnavailable, open_store_for


@dataclass
class StageEvent:
    """What the display is told when a stage starts or ends."""

    iteration: int
    stage: str
    seconds: float = 0.0
    skipped: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


class Display:
    """Hooks for showing progress; the default shows nothing."""

    def stage_started(self, event: StageEvent) -> Progress:
        return no_progress

    def stage_finished(self, event: StageEvent) -> None:
        return None

    def note(self, message: str) -> None:
        return None

    def notice(self, message: str) -> None:
        """What must be seen even in a quiet run (stages reused or deleted)."""
        self.note(message)


@dataclass
class RunResult:
    status: AlignmentRunStatus
    metrics: dict[int, Metrics]
    stage_seconds: dict[str, float]
    run_uri: str


def open_run_store(run: AlignmentRun, storage_uri: str | None = None) -> Store:
    spec = run.spec
    uri = layout.run_uri(storage_uri or spec.storage.uri, run.namespace, run.name)
    return open_store_for(uri, spec.storage)


def observe(
    store: Store,
    spec: AlignmentRunSpec,
    known: dict[int, Metrics] | None = None,
    reused: planner.Reuse | None = None,
) -> planner.Observed:
    done = run_state.finished_stages(store, spec)
    return planner.Observed(
        done=done,
        metrics=run_state.read_metrics(store, done, known),
        exported=run_state.read_exported(store, done),
        reused=reused,
    )


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def prepared_models(spec: AlignmentRunSpec) -> list[str]:
    """The models this machine builds or converts before the loop: of those a stage loads
    in-process (`run.stage_models`), the tiny one, GGUF files and package files."""
    loaded = (m for stage in stage_table.NAMES for m in stage_models.in_process_models(spec, stage))
    return [
        m
        for m in dict.fromkeys(loaded)
        if m == TINY_MODEL or is_gguf_model(m) or m.startswith("pkg://")
    ]


def run_local(
    run: AlignmentRun,
    *,
    storage_uri: str | None = None,
    display: Display | None = None,
    report: Callable[[Store, AlignmentRunSpec, RunResult], None] | None = None,
    fresh: bool = False,
) -> RunResult:
    """Run (or resume) the whole loop in this process; `fresh`: delete what an earlier run left
    at the same store path first."""
    display = display or Display()
    spec = run.spec
    store = open_run_store(run, storage_uri)
    taken = ensure_run_json(store, run, fresh=fresh, now=now())
    if taken.message:
        display.notice(taken.message)
    with open_runner(spec, store) as runner:
        _prepare(runner, spec, display)
        status = _run_stages(runner, spec, store, display, taken)
    done = run_state.finished_stages(store, spec)
    result = RunResult(
        status=status,
        metrics=run_state.read_metrics(store, done),
        stage_seconds=outputs.stage_seconds(store, done),
        run_uri=store.uri,
    )
    if report is not None:
        report(store, spec, result)
    return result


def _run_stages(
    runner: StageRunner, spec: AlignmentRunSpec, store: Store, display: Display, taken: TakeOver
) -> AlignmentRunStatus:
    """Run the planner's next stage until it says the run is over (or suspended); the run's
    final status."""
    observed: planner.Observed | None = None
    status: AlignmentRunStatus | None = None
    while True:
        observed = observe(
            store,
            spec,
            known=dict(observed.metrics) if observed else None,
            reused=taken.reuse,
        )
        if taken.decision == "resume" and status is None and observed.done:
            display.notice(f"resuming the run at {store.uri}: {len(observed.done)} stage(s) done")
        action = planner.next_action(spec, observed)
        if not isinstance(action, planner.RunStage):
            # Locally nothing runs in the background: a Wait means suspended.
            return _finish(spec, observed, store, status)
        status = planner.status(
            spec, observed, action, now=now(), previous=status, artifacts=store.uri
        )
        outputs.write_status(store, status)
        _run_stage(runner, action, spec, observed, store, status, display)


def _run_stage(
    runner: StageRunner,
    action: planner.RunStage,
    spec: AlignmentRunSpec,
    observed: planner.Observed,
    store: Store,
    status: AlignmentRunStatus,
    display: Display,
) -> None:
    """Run one stage in this process, telling the display when it starts and ends."""
    progress = display.stage_started(StageEvent(action.iteration, action.stage))
    try:
        manifest, ran = runner.run(
            action.stage, action.iteration, parent=action.parent, progress=progress
        )
    except Exception as e:
        raise _stage_failed(e, action, spec, observed, store, status) from e
    display.stage_finished(
        StageEvent(
            action.iteration,
            action.stage,
            seconds=float(manifest.get("seconds", 0.0)),
            skipped=not ran,
            summary=manifest.get("summary", {}),
        )
    )


def _prepare(runner: StageRunner, spec: AlignmentRunSpec, display: Display) -> None:
    """Build or convert the models this machine runs, once per cache: that stays out of the
    first stage's time, and a model that can't be had (a package not installed) is bad input
    before anything runs."""
    for model in prepared_models(spec):
        try:
            runner.engines.model_path(model, progress=display.note)
        except ValueError as e:
            raise SpecError(str(e).splitlines()[0]) from None


def _stage_failed(
    e: Exception,
    action: planner.RunStage,
    spec: AlignmentRunSpec,
    observed: planner.Observed,
    store: Store,
    status: AlignmentRunStatus | None,
) -> StageFailed:
    """The run's end after a stage raised `e`: the status written down (when the store still
    answers), and the error to raise, of the class the exception's cause says."""
    code = exits.exit_for(e)
    failure = planner.StageFailure(action.iteration, action.stage, _one_line(e), exit_code=code)
    observed = planner.Observed(
        done=observed.done, metrics=observed.metrics, failure=failure, reused=observed.reused
    )
    message = getattr(planner.next_action(spec, observed), "message", str(e))
    try:
        _finish(spec, observed, store, status)
    except StoreUnavailable:
        # The store is what failed: status.json can't be written, and waiting on it again
        # would double the time a frozen store takes to end the run.
        message += "; status.json not written (the store is down)"
    return StageFailed(message, code)


class StageFailed(RuntimeError):
    """A stage raised; the run's status says which and why, `code` how (`exits.Exit`)."""

    def __init__(self, message: str, code: int = exits.Exit.FAILED) -> None:
        super().__init__(message)
        self.code = code


def _finish(
    spec: AlignmentRunSpec,
    observed: planner.Observed,
    store: Store,
    previous: AlignmentRunStatus | None,
) -> AlignmentRunStatus:
    action = planner.next_action(spec, observed)
    status = planner.status(
        spec, observed, action, now=now(), previous=previous, artifacts=store.uri
    )
    outputs.write_status(store, status)
    return status


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
