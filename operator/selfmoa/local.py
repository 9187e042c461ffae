"""LocalExecutor: the same plan as the operator, carried out on this machine.

`run_local` loops: read what is done from the store, ask the planner for the next action, run
that stage in-process, until the planner says the run is over. Everything it knows comes from the
store, so running it again after Ctrl-C or `kill -9` resumes at the first unfinished stage.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfmoa import __version__, layout, planner, runstate
from selfmoa.api.errors import SpecError
from selfmoa.api.spec import (
    TINY_MODEL,
    AlignmentRun,
    AlignmentRunSpec,
    AlignmentRunStatus,
    Phase,
)
from selfmoa.engines.provider import EngineProvider
from selfmoa.metrics import Metrics
from selfmoa.stages import StageContext, execute, get_stage
from selfmoa.stages.base import Progress, no_progress
from selfmoa.store import Store, open_store

#: Spec fields a user may change when re-running an existing run (to extend or stop it).
MUTABLE_FIELDS = {"iterations", "stopWhen", "suspend"}


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


@dataclass
class RunResult:
    status: AlignmentRunStatus
    metrics: dict[int, Metrics]
    stage_seconds: dict[str, float]
    run_uri: str


def open_run_store(run: AlignmentRun, storage_uri: str | None = None) -> Store:
    spec = run.spec
    uri = layout.run_uri(storage_uri or spec.storage.uri, run.namespace, run.name)
    return open_store(uri, endpoint=spec.storage.endpoint, region=spec.storage.region)


def ensure_run_json(store: Store, run: AlignmentRun) -> None:
    """Write the spec snapshot once; refuse to mix two different specs in one run directory."""
    wire = run.spec.wire()
    if store.exists(layout.RUN_JSON):
        saved = store.read_json(layout.RUN_JSON).get("spec", {})
        changed = sorted(
            k
            for k in set(saved) | set(wire)
            if saved.get(k) != wire.get(k) and k not in MUTABLE_FIELDS
        )
        if changed:
            raise SpecError(
                f"spec.{changed[0]}: differs from the existing run at {store.uri} "
                "(use another metadata.name or --store to start a new run)"
            )
    store.write_json(layout.RUN_JSON, run_document(run))


def run_document(run: AlignmentRun) -> dict[str, Any]:
    """run.json: the spec snapshot a stage Job reads when it is given no spec."""
    return {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "metadata": {"name": run.name, "namespace": run.namespace},
        "spec": run.spec.wire(),
        "selfmoa": __version__,
    }


def observe(
    store: Store, spec: AlignmentRunSpec, known: dict[int, Metrics] | None = None
) -> planner.Observed:
    done = runstate.finished_stages(store, spec)
    return planner.Observed(done=done, metrics=runstate.read_metrics(store, done, known))


def stage_seconds(store: Store, done: frozenset[tuple[int, str]]) -> dict[str, float]:
    out = {}
    for k, stage in sorted(done):
        manifest = store.read_json(layout.manifest_key(k, stage))
        out[f"{layout.iteration_dir(k)}/{stage}"] = float(manifest.get("seconds", 0.0))
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_local(
    run: AlignmentRun,
    *,
    storage_uri: str | None = None,
    display: Display | None = None,
    report: Callable[[Store, AlignmentRunSpec, RunResult], None] | None = None,
) -> RunResult:
    """Run (or resume) the whole loop in this process."""
    display = display or Display()
    spec = run.spec
    store = open_run_store(run, storage_uri)
    ensure_run_json(store, run)
    provider = EngineProvider(spec)
    observed: planner.Observed | None = None
    status: AlignmentRunStatus | None = None
    if spec.policy.model == TINY_MODEL:
        # Built once per cache; doing it here keeps the build out of the first stage's time.
        provider.model_path(TINY_MODEL, progress=display.note)
    try:
        with tempfile.TemporaryDirectory(prefix="selfmoa-") as tmp:
            while True:
                observed = observe(store, spec, known=dict(observed.metrics) if observed else None)
                action = planner.next_action(spec, observed)
                if isinstance(action, planner.RunStage):
                    status = planner.status(
                        spec, observed, action, now=now(), previous=status, artifacts=store.uri
                    )
                    store.write_json("status.json", status.model_dump(mode="json", by_alias=True))
                    event = StageEvent(action.iteration, action.stage)
                    ctx = StageContext(
                        spec=spec,
                        store=store,
                        iteration=action.iteration,
                        workdir=Path(tmp),
                        engines=provider,
                        parent=action.parent,
                        progress=display.stage_started(event),
                    )
                    try:
                        manifest, ran = execute(action.stage, get_stage(action.stage), ctx)
                    except Exception as e:
                        failure = planner.StageFailure(action.iteration, action.stage, _one_line(e))
                        observed = planner.Observed(
                            done=observed.done, metrics=observed.metrics, failure=failure
                        )
                        status = _finish(spec, observed, store, status)
                        raise StageFailed(status.message or str(e)) from e
                    display.stage_finished(
                        StageEvent(
                            action.iteration,
                            action.stage,
                            seconds=float(manifest.get("seconds", 0.0)),
                            skipped=not ran,
                            summary=manifest.get("summary", {}),
                        )
                    )
                    continue
                if isinstance(action, planner.Wait):
                    # Locally nothing runs in the background: a wait means suspended.
                    status = _finish(spec, observed, store, status)
                    break
                status = _finish(spec, observed, store, status)
                break
    finally:
        provider.close()
    done = runstate.finished_stages(store, spec)
    result = RunResult(
        status=status,
        metrics=runstate.read_metrics(store, done),
        stage_seconds=stage_seconds(store, done),
        run_uri=store.uri,
    )
    if report is not None:
        report(store, spec, result)
    return result


class StageFailed(RuntimeError):
    """A stage raised; the run's status says which and why."""


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
    store.write_json("status.json", status.model_dump(mode="json", by_alias=True))
    return status


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def is_finished(status: AlignmentRunStatus) -> bool:
    return status.phase in (Phase.succeeded, Phase.failed)
