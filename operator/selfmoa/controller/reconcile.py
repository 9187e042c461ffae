"""One reconcile of one AlignmentRun: observe -> plan -> apply -> status. And the loop that drives it.

The decisions, the status included, are `controller.plan`'s, pure functions of what was
observed; this module only observes, applies the plan and writes the status it carries.

The loop (one per run, a Kopf daemon) reconciles when kicked (the run changed, one of its Jobs
or Deployments changed) and otherwise every `resync_seconds` as a safety net. Everything it
decides comes from the planner over facts read back from the store and the cluster, so a
restarted operator continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from selfmoa.api import SpecError, parse_run
from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus, Phase
from selfmoa.controller import prometheus as prom
from selfmoa.controller.children import POD_CHECK_AFTER_S, job_seconds
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.executor import KubernetesExecutor
from selfmoa.controller.failures import classify
from selfmoa.controller.observe import Snapshot, TrainJobRejected
from selfmoa.controller.plan import (
    PLACEHOLDER_SPEC,
    Facts,
    Plan,
    blocked,
    invalid,
    overruled,
    plan,
    settled,
)
from selfmoa.controller.runtime import Runtime
from selfmoa.run.planner import Action, Finish, Observed, RunStage

log = logging.getLogger("selfmoa.controller")

#: A reconcile longer than this is logged: each stage of the run waits on its reconcile.
SLOW_RECONCILE_S = 2.0

#: Posts a Kubernetes Event about the run: (type Normal|Warning, reason, message).
EventFn = Callable[[str, str, str], None]


def effective_body(body: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    """The run with the operator's default storage filled in where the spec leaves it unset."""
    spec = dict(body.get("spec") or {})
    if "storage" not in spec and rt.config.storage is not None:
        spec["storage"] = rt.config.storage.model_dump(by_alias=True, exclude_none=True)
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind", "AlignmentRun"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": spec,
    }


def validate(body: Mapping[str, Any], rt: Runtime) -> AlignmentRunSpec:
    """The typed spec; `SpecError` (one line naming the field) when it can't be used."""
    spec = parse_run(effective_body(body, rt)).spec
    problem = unshared_store(spec, rt.config)
    if problem is not None:
        raise SpecError(problem)
    return spec


def unshared_store(spec: AlignmentRunSpec, config: OperatorConfig) -> str | None:
    """Why the run's store can't work on a cluster: a file:// path is a directory inside each
    stage Pod, which no other Pod (nor the operator) sees. Said before any stage runs, instead
    of a stage that "wrote no manifest"."""
    uri = spec.storage.uri
    if not uri.startswith("file://") or config.shared_file_storage:
        return None
    return (
        f"spec.storage.uri: {uri} is a directory inside each stage Pod, which no other Pod "
        "sees: give the run an s3:// store (spec.storage, or the chart's config.storage for "
        "every run)"
    )


def _previous(rt: Runtime, key: tuple[str, str], body: Mapping[str, Any]) -> dict[str, Any]:
    return rt.last_status.get(key) or dict(body.get("status") or {})


def _prune(d: Mapping[str, Any]) -> dict[str, Any]:
    """Status without null fields (what the API server stores after a merge patch)."""
    return {k: v for k, v in d.items() if v is not None}


def _parse_status(raw: Mapping[str, Any]) -> AlignmentRunStatus | None:
    try:
        return AlignmentRunStatus.model_validate(raw) if raw else None
    except ValidationError:
        return None  # a status someone else wrote badly is rebuilt, not trusted


async def reconcile(body: Mapping[str, Any], rt: Runtime, emit: EventFn) -> float | None:
    """One observe -> plan -> apply -> status pass. Returns how soon the run wants the next one
    (seconds), when sooner than the resync matters (a new stage's Pods to look at), else None."""
    meta = body.get("metadata") or {}
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    generation = meta.get("generation")
    prom.RECONCILES.inc()
    if meta.get("deletionTimestamp"):
        # Being deleted: the delete handler removes the children; starting more would race it.
        return None
    prev_raw = _previous(rt, (namespace, name), body)
    previous = _parse_status(prev_raw)
    if previous is not None and settled(previous, generation):
        rt.phases[(namespace, name)] = previous.phase.value
        return None
    try:
        spec = validate(body, rt)
    except SpecError as e:
        await _invalid(body, rt, emit, previous, prev_raw, str(e))
        return None

    ex = KubernetesExecutor(rt, name=name, namespace=namespace, spec=spec, owner=body)
    snap, facts = await _observe(ex, previous, generation)
    planned, started = await _apply(ex, previous, facts, plan(spec, previous, facts), snap, emit)
    _events(previous, planned.status, snap, planned.action, emit)
    await _write_status(ex, rt, planned.status, prev_raw)
    await _write_outputs(ex, previous, planned.status, snap.observed)
    if started:
        # The new Job's own watch events don't wake the run until it ends (`JobIndex.event`):
        # come back when its Pods are worth asking about.
        return float(POD_CHECK_AFTER_S + 1)
    return snap.recheck_in


async def _observe(
    ex: KubernetesExecutor, previous: AlignmentRunStatus | None, generation: int | None
) -> tuple[Snapshot, Facts]:
    """Everything the plan decides from: what the store path holds (whose run, finished
    stages), the Jobs, the serving Deployments, whether TrainJobs are served."""
    await ex.open()
    taken = await asyncio.to_thread(ex.adopt_store, previous.artifacts if previous else None)
    snap = await ex.observe()
    if taken.reuse is not None:
        snap.observed = dataclasses.replace(snap.observed, reused=taken.reuse)
    facts = Facts(
        observed=snap.observed,
        take_over=taken,
        trainer_served=ex.trainer_served,
        training_runtime=ex.rt.config.training_runtime,
        serving=snap.serving,
        wanted_hash=snap.wanted_hash,
        now=ex.rt.now(),
        generation=generation,
        artifacts=ex.run_uri,
        attempts=snap.attempts,
    )
    return snap, facts


async def _apply(
    ex: KubernetesExecutor,
    previous: AlignmentRunStatus | None,
    facts: Facts,
    planned: Plan,
    snap: Snapshot,
    emit: EventFn,
) -> tuple[Plan, bool]:
    """Post the plan's Events, change the servers, start the stage. Returns the plan, or the
    plan overruled by what only applying tells (Trainer's webhook refused the TrainJob), and
    whether a stage's Job was created."""
    for event in planned.events:
        emit(*event)
    await ex.apply_serving(planned.serving, snap)
    start = planned.action
    if not isinstance(start, RunStage):
        return planned, False
    try:
        created = await ex.start_stage(start)
    except TrainJobRejected as e:
        ended = Finish(Phase.failed, "TrainJobRejected", str(e)[:1000])
        return overruled(ex.spec, previous, facts, planned, ended), False
    if created:
        prom.JOBS_CREATED.labels(stage=start.stage).inc()
        emit(
            "Normal", "StageStarted", f"stage {start.stage} of iteration {start.iteration} started"
        )
    return planned, created


async def _write_outputs(
    ex: KubernetesExecutor,
    previous: AlignmentRunStatus | None,
    new: AlignmentRunStatus,
    observed: Observed,
) -> None:
    """status.json on every stage or phase change; report.html when metrics or the phase
    change. A store that refuses the write costs a log line, not the reconcile."""
    stage_changed = previous is None or (previous.stage, previous.phase, previous.iteration) != (
        new.stage,
        new.phase,
        new.iteration,
    )
    report = previous is None or (
        len(previous.iterations) != len(new.iterations) or previous.phase != new.phase
    )
    if not (stage_changed or report):
        return
    try:
        await asyncio.to_thread(ex.write_outputs, new, observed, report=report)
    except Exception as e:
        log.warning(
            "run %s/%s: could not write status.json/report.html: %s", ex.namespace, ex.name, e
        )


async def _write_status(
    ex: KubernetesExecutor, rt: Runtime, new: AlignmentRunStatus, prev_raw: Mapping[str, Any]
) -> None:
    """Patch the status when it changed, and remember it (the watch may lag behind)."""
    key = (ex.namespace, ex.name)
    wire = new.model_dump(by_alias=True, mode="json")
    if _prune(wire) != _prune(prev_raw):
        await ex.patch_status(wire)
    rt.last_status[key] = _prune(wire)
    rt.phases[key] = new.phase.value
    prom.publish_phases(rt.phases)


def _events(
    previous: AlignmentRunStatus | None,
    new: AlignmentRunStatus,
    snap: Snapshot,
    action: Action,
    emit: EventFn,
) -> None:
    """Stage end / run end Events, each once (on the transition, not on every reconcile)."""
    if previous is not None and previous.stage is not None and previous.iteration is not None:
        k, stage = previous.iteration, previous.stage
        if (k, stage) in snap.observed.done and (new.iteration, new.stage) != (k, stage):
            job = snap.jobs.get((k, stage))
            secs = job_seconds(job) if job else None
            if secs is not None:
                prom.STAGE_SECONDS.labels(stage=stage).observe(secs)
            took = f" in {secs:.0f}s" if secs is not None else ""
            emit("Normal", "StageSucceeded", f"stage {stage} of iteration {k} finished{took}")
    was = previous.phase if previous is not None else None
    if isinstance(action, Finish) and was != new.phase:
        kind = "Warning" if new.phase == Phase.failed else "Normal"
        emit(kind, action.reason, action.message)


async def _invalid(
    body: Mapping[str, Any],
    rt: Runtime,
    emit: EventFn,
    previous: AlignmentRunStatus | None,
    prev_raw: Mapping[str, Any],
    message: str,
) -> None:
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    planned = invalid(previous, message, now=rt.now(), generation=meta.get("generation"))
    ex = KubernetesExecutor(rt, name=name, namespace=namespace, spec=PLACEHOLDER_SPEC, owner=body)
    await _write_status(ex, rt, planned.status, prev_raw)
    for event in planned.events:
        emit(*event)


async def _blocked(
    body: Mapping[str, Any],
    rt: Runtime,
    emit: EventFn,
    e: Exception,
    attempt: int,
    delay: float,
) -> None:
    """Say in the run's status why its reconcile failed (`plan.blocked`). Logged with the run's
    name."""
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    cause = classify(e)
    prom.RECONCILE_ERRORS.labels(reason=cause.reason).inc()
    level = logging.ERROR if cause.permanent or attempt >= 3 else logging.WARNING
    log.log(
        level,
        "run %s/%s: %s: %s (attempt %d)",
        namespace,
        name,
        cause.reason,
        cause.message,
        attempt,
        exc_info=cause.reason == "ReconcileError",
    )
    prev_raw = _previous(rt, (namespace, name), body)
    previous = _parse_status(prev_raw)
    try:
        spec = validate(body, rt)
    except SpecError:
        spec = PLACEHOLDER_SPEC
    planned = blocked(
        spec,
        previous,
        cause,
        attempt=attempt,
        delay=delay,
        now=rt.now(),
        generation=meta.get("generation"),
    )
    ex = KubernetesExecutor(rt, name=name, namespace=namespace, spec=spec, owner=body)
    for event in planned.events:
        emit(*event)
    with contextlib.suppress(Exception):  # the API itself may be what is failing
        await _write_status(ex, rt, planned.status, prev_raw)


async def drive(
    body: Mapping[str, Any],
    rt: Runtime,
    emit: EventFn,
    stopped: Callable[[], bool],
    wait_stopped: Callable[[], Awaitable[Any]],
) -> None:
    """Reconcile whenever kicked, else every `resync_seconds`, until `stopped`."""
    meta = body["metadata"]
    trigger = rt.trigger(str(meta.get("namespace") or "default"), str(meta["name"]))
    errors = 0
    while not stopped() and not meta.get("deletionTimestamp"):
        trigger.clear()
        delay = rt.resync_seconds
        started = time.monotonic()
        try:
            sooner = await reconcile(body, rt, emit)
            took = time.monotonic() - started
            if took > SLOW_RECONCILE_S:  # what the run's next stage waited on
                log.warning("%s: one reconcile took %.1f s", meta["name"], took)
            if sooner is not None:
                delay = min(delay, sooner)
            errors = 0
        except asyncio.CancelledError:
            raise
        except Exception as e:
            errors += 1
            delay = min(rt.resync_seconds, 0.5 * 2 ** min(errors, 8))
            await _blocked(body, rt, emit, e, errors, delay)
        waits = [asyncio.ensure_future(trigger.wait()), asyncio.ensure_future(wait_stopped())]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w
