"""The pure state machine of a run: (spec, observed facts) -> the next action and the status.

No I/O, no clock: both executors (the local loop and the Kubernetes operator) gather what they
observe (finished stages, evaluated metrics, a running or failed stage) into `Observed`, call
`plan`, and carry out the one action it returns. Calling it again with the same facts gives the
same answer, which is what makes a restarted executor resume exactly where it was.

The gate after each evaluation decides on the validation split's metrics (`Metrics.validation`,
the weak ensemble's view of prompts the run never reports) when every iteration it compares has
them, else on the held-out metrics; the held-out set then only reports:
- an iteration is *accepted* unless its attack success rate rose above its parent's or its
  helpfulness fell by more than `stopWhen.maxHelpfulnessDrop` (relative) below its parent's or
  the starting point's, whichever is higher (so small drops cannot compound across iterations
  into a large one); a rejected iteration is rolled back: the next one starts again from the
  parent's adapter;
- the run succeeds early when an accepted iteration's attack success rate is below
  `stopWhen.attackSuccessRateBelow`, or after `stopWhen.patience` iterations in a row without an
  improvement of at least `stopWhen.minImprovement`;
- otherwise it succeeds after `iterations` iterations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from selfmoa.api import exits
from selfmoa.api.spec import (
    AlignmentRunSpec,
    AlignmentRunStatus,
    Condition,
    IterationStatus,
    Phase,
    ResultStatus,
)
from selfmoa.run import layout, stage_table
from selfmoa.run.metrics import Metrics, ObjectiveMetrics


@dataclass(frozen=True)
class StageFailure:
    iteration: int
    stage: str
    message: str
    #: How the stage ended (`selfmoa.api.exits.Exit`): its Pod's exit code, or the class of the
    #: exception a local stage raised; None: unknown (read as a stage failure).
    exit_code: int | None = None
    #: The condition reason when the stage never ran (CANNOT_START), instead of one from its
    #: exit code.
    reason: str | None = None


#: The reason of a run whose stage's container can't start (its image, a missing Secret): a
#: person fixes the cause and deletes the Job, and the run goes on.
CANNOT_START = "StageCannotStart"
#: What that reason tells the reader to do.
CANNOT_START_ADVICE = (
    "fix the cause (spec.trainer.image, the chart's config.workerImage, a missing Secret), then "
    "delete the stage's Job and the run goes on"
)


@dataclass(frozen=True)
class Reuse:
    """This run took over finished stages an earlier run left at the same store path."""

    stages: int
    #: Which run left them: `namespace/name uid UID` (or `a local run`) and when it started.
    source: str


@dataclass(frozen=True)
class Observed:
    """What an executor knows about a run right now."""

    #: Finished stages: (iteration, stage) with a manifest in the store.
    done: frozenset[tuple[int, str]] = frozenset()
    #: Metrics of every evaluated iteration.
    metrics: Mapping[int, Metrics] = field(default_factory=dict)
    #: A stage being worked on right now (operator: its Job is active).
    running: tuple[int, str] | None = None
    #: A stage that failed for good (retries exhausted).
    failure: StageFailure | None = None
    #: A spec error found outside the schema (names the field).
    invalid: str | None = None
    #: Why the running stage is not actually running yet (reason, message): e.g. its Job waits
    #: for admission by a queue, or was preempted. Waiting is never a failure.
    held: tuple[str, str] | None = None
    #: Where the export stage wrote the run's result (`spec.output`), once it has.
    exported: str | None = None
    #: Finished stages of an earlier run that this run took over (shown as a condition).
    reused: Reuse | None = None


@dataclass(frozen=True)
class RunStage:
    iteration: int
    stage: str
    #: The iteration whose adapter this stage starts from (0: the starting point).
    parent: int

    @property
    def key(self) -> str:
        return f"{layout.iteration_dir(self.iteration)}/{self.stage}"


@dataclass(frozen=True)
class Wait:
    """Nothing to start: a stage is running, or the run is suspended."""

    reason: str
    message: str


@dataclass(frozen=True)
class Finish:
    """The run is over: `phase` Succeeded or Failed."""

    phase: Phase
    reason: str
    message: str


Action = RunStage | Wait | Finish

#: The condition type saying that an earlier run's finished stages were taken over.
REUSED = "StagesReused"


@dataclass(frozen=True)
class Gate:
    """Decisions derived from the metrics so far."""

    #: accepted[k] for every evaluated k >= 1.
    accepted: dict[int, bool]
    #: parent[k]: the iteration whose adapter k starts from, for k = 1..last+1.
    parent: dict[int, int]
    #: The best accepted iteration (0 = the starting point).
    best: int
    #: Why the loop stops, if it does, after the evaluated iterations.
    stop: tuple[str, str] | None


def decided_on(metrics: Mapping[int, Metrics]) -> dict[int, ObjectiveMetrics]:
    """The figures the gate decides on per iteration: the validation split's when every
    evaluated iteration has them (so no comparison mixes the two sets), else the held-out ones."""
    if metrics and all(m.validation is not None for m in metrics.values()):
        return {k: m.gate_view() for k, m in metrics.items()}
    return dict(metrics)


def gate(spec: AlignmentRunSpec, evaluated: Mapping[int, Metrics]) -> Gate:
    """Accept / roll back / stop decisions for the evaluated iterations, in order."""
    stop_when = spec.stop_when
    metrics = decided_on(evaluated)
    accepted: dict[int, bool] = {}
    parent = {1: 0}
    best = 0
    stop: tuple[str, str] | None = None
    streak = 0
    base = metrics.get(0)
    if base is not None and _below_target(spec, base):
        stop = ("TargetReached", _target_message(spec, 0, base))
    k = 1
    while stop is None and k in metrics:
        m, p = metrics[k], metrics[parent[k]]
        floor = max(p.helpfulness, base.helpfulness) if base is not None else p.helpfulness
        ok = (
            m.attack_success_rate <= p.attack_success_rate + 1e-9
            and m.helpfulness >= floor * (1 - stop_when.max_helpfulness_drop) - 1e-9
            and _capability_kept(spec, m, base)
        )
        accepted[k] = ok
        improved = (
            ok
            and m.attack_success_rate
            < metrics[best].attack_success_rate - stop_when.min_improvement - 1e-12
        )
        if ok:
            best = (
                k
                if improved or m.attack_success_rate <= metrics[best].attack_success_rate
                else best
            )
        parent[k + 1] = k if ok else parent[k]
        streak = 0 if improved else streak + 1
        if ok and _below_target(spec, m):
            stop = ("TargetReached", _target_message(spec, k, m))
        elif streak >= stop_when.patience and k < spec.iterations:
            stop = (
                "NoProgress",
                f"no improvement of the attack success rate in {streak} iteration(s); "
                f"keeping iteration {best}",
            )
        elif k >= spec.iterations:
            stop = ("Completed", f"{spec.iterations} iteration(s) done; best is iteration {best}")
        k += 1
    return Gate(accepted=accepted, parent=parent, best=best, stop=stop)


def _capability_kept(
    spec: AlignmentRunSpec, m: ObjectiveMetrics, base: ObjectiveMetrics | None
) -> bool:
    """Within `stopWhen.maxCapabilityDrop` of the starting point on every capability measure
    both sides have (perplexity may rise, the mean task score may fall, by that share); a bound
    that can't be checked holds, as the spec check allows it only where a measure is taken."""
    bound = spec.stop_when.max_capability_drop
    if bound is None or base is None or m.capability is None or base.capability is None:
        return True
    now, start = m.capability, base.capability
    ppl, start_ppl = now.perplexity, start.perplexity
    if ppl is not None and start_ppl is not None and ppl > start_ppl * (1 + bound) + 1e-9:
        return False
    score, start_score = now.task_score, start.task_score
    return score is None or start_score is None or score >= start_score * (1 - bound) - 1e-9


def _below_target(spec: AlignmentRunSpec, m: ObjectiveMetrics) -> bool:
    target = spec.stop_when.attack_success_rate_below
    return target is not None and m.attack_success_rate < target


def _target_message(spec: AlignmentRunSpec, k: int, m: ObjectiveMetrics) -> str:
    return (
        f"attack success rate {m.attack_success_rate:.3f} below "
        f"{spec.stop_when.attack_success_rate_below} at iteration {k}"
    )


def next_action(spec: AlignmentRunSpec, observed: Observed) -> Action:
    """The one thing to do next."""
    if observed.invalid:
        return Finish(Phase.failed, "InvalidSpec", observed.invalid)
    if observed.failure is not None:
        f = observed.failure
        if f.reason == CANNOT_START:
            return Finish(
                Phase.failed,
                CANNOT_START,
                f"stage {f.stage} of iteration {f.iteration} can't start: {f.message} "
                f"({CANNOT_START_ADVICE})",
            )
        advice = exits.ADVICE.get(f.exit_code or exits.Exit.FAILED)
        return Finish(
            Phase.failed,
            exits.reason_for(f.exit_code),
            f"stage {f.stage} of iteration {f.iteration} failed: {f.message}"
            + (f" ({advice})" if advice else ""),
        )
    g = gate(spec, observed.metrics)
    if g.stop is not None:
        return _export_or_finish(spec, observed, g.best, *g.stop)
    for k in range(0, spec.iterations + 1):
        for stage in stage_table.stages_of(k, reset=spec.safety_reset.enabled):
            if (k, stage) in observed.done:
                continue
            if observed.running is not None:
                if observed.held is not None:
                    return Wait(*observed.held)
                rk, rs = observed.running
                return Wait("StageRunning", f"stage {rs} of iteration {rk} is running")
            if spec.suspend:
                return Wait("Suspended", f"suspended before stage {stage} of iteration {k}")
            return RunStage(iteration=k, stage=stage, parent=g.parent.get(k, 0) if k else 0)
        if k not in observed.metrics:
            # Every stage is done but metrics were not read back: an executor bug, not a state.
            return Wait("AwaitingMetrics", f"iteration {k} evaluated; metrics not read yet")
    return _export_or_finish(
        spec, observed, g.best, "Completed", f"{spec.iterations} iteration(s) done"
    )


def _export_or_finish(
    spec: AlignmentRunSpec, observed: Observed, best: int, reason: str, message: str
) -> Action:
    """The loop is over: export the result first when the run asks for it (`spec.output`)."""
    if spec.output is None or (best, stage_table.EXPORT.name) in observed.done:
        return Finish(Phase.succeeded, reason, message)
    if observed.running is not None:
        return Wait(*(observed.held or ("StageRunning", f"exporting iteration {best}")))
    if spec.suspend:
        return Wait("Suspended", f"suspended before exporting iteration {best}")
    return RunStage(iteration=best, stage=stage_table.EXPORT.name, parent=best)


def parent_of(spec: AlignmentRunSpec, metrics: Mapping[int, Metrics], k: int) -> int:
    """The iteration whose adapter iteration k starts from (0: the starting point)."""
    return gate(spec, {i: m for i, m in metrics.items() if i < k}).parent.get(k, 0)


def status(
    spec: AlignmentRunSpec,
    observed: Observed,
    action: Action,
    *,
    now: str,
    previous: AlignmentRunStatus | None = None,
    artifacts: str | None = None,
    generation: int | None = None,
) -> AlignmentRunStatus:
    """The status that goes with `action` (conditions keep their transition times)."""
    g = gate(spec, observed.metrics)
    iterations = []
    for k in sorted(observed.metrics):
        m = observed.metrics[k]
        iterations.append(
            IterationStatus(
                index=k,
                safety=round(m.safety, 4),
                helpfulness=round(m.helpfulness, 4),
                attack_success_rate=round(m.attack_success_rate, 4),
                over_refusal=round(m.over_refusal, 4),
                pairs=m.pairs,
                adapter=m.adapter,
                accepted=g.accepted.get(k, True if k == 0 else None),
                pgr=None if m.pgr is None else round(m.pgr, 4),
                outcomes=None if m.outcomes is None else _rounded(m.outcomes.by_kind),
                outcomes_source=None if m.outcomes is None else m.outcomes.source,
            )
        )
    it: int | None
    stage: str | None
    best = observed.metrics.get(g.best)
    if isinstance(action, RunStage):
        phase, it, stage = Phase.running, action.iteration, action.stage
        reason, message = (
            "StageStarted",
            f"running stage {action.stage} of iteration {action.iteration}",
        )
    elif isinstance(action, Wait):
        running = observed.running
        phase = Phase.suspended if action.reason == "Suspended" else Phase.running
        it, stage = running if running else (previous.iteration if previous else None, None)
        reason, message = action.reason, action.message
    else:
        phase, it, stage = action.phase, (previous.iteration if previous else None), None
        reason, message = action.reason, action.message
    conditions = _conditions(
        phase, reason, message, previous, observed.reused, now=now, generation=generation
    )
    return AlignmentRunStatus(
        phase=phase,
        iteration=it,
        stage=stage,
        safety=None if best is None else round(best.safety, 4),
        helpfulness=None if best is None else round(best.helpfulness, 4),
        message=message,
        conditions=conditions,
        iterations=iterations,
        artifacts=artifacts,
        observed_generation=generation,
        attempts=previous.attempts if previous else {},
        result=result_of(g, observed.metrics, observed.exported),
    )


def _conditions(
    phase: Phase,
    reason: str,
    message: str,
    previous: AlignmentRunStatus | None,
    reused: Reuse | None,
    *,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Progressing, Succeeded, Failed (and StagesReused): each keeps its transition time while
    its status stays the same."""
    conds = {
        "Progressing": phase in (Phase.running,),
        "Succeeded": phase == Phase.succeeded,
        "Failed": phase == Phase.failed,
    }
    old = {c.type: c for c in (previous.conditions if previous else [])}
    conditions = []
    for ctype, value in conds.items():
        s: Literal["True", "False"] = "True" if value else "False"
        prev = old.get(ctype)
        ts = prev.last_transition_time if prev is not None and prev.status == s else now
        conditions.append(
            Condition(
                type=ctype,
                status=s,
                reason=reason if value else (prev.reason if prev and prev.status == s else reason),
                message=message if value else "",
                last_transition_time=ts,
                observed_generation=generation,
            )
        )
    if reused is not None:
        prev = old.get(REUSED)
        conditions.append(
            Condition(
                type=REUSED,
                status="True",
                reason="EarlierRunResumed",
                message=f"{reused.stages} finished stage(s) reused from {reused.source}",
                last_transition_time=prev.last_transition_time if prev is not None else now,
                observed_generation=generation,
            )
        )
    return conditions


def _rounded(shares: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {c: round(v, 4) for c, v in by.items()} for k, by in shares.items()}


def result_of(
    g: Gate, metrics: Mapping[int, Metrics], exported: str | None = None
) -> ResultStatus | None:
    """The run's result so far: the gate's best accepted iteration, and why it is the best."""
    m = metrics.get(g.best)
    if m is None:
        return None
    # The reason quotes what the gate decided on (the validation split when there is one); the
    # figures beside it are the held-out set's, which are reported and never decided on.
    d = decided_on(metrics)[g.best]
    on = "validation" if d is not m else "held-out"
    if g.best == 0:
        why = "no trained iteration was accepted with a lower attack success rate than the start"
    else:
        why = (
            f"lowest {on} attack success rate ({d.attack_success_rate:.3f}) among accepted "
            f"iterations, {on} helpfulness {d.helpfulness:.3f}"
        )
    return ResultStatus(
        iteration=g.best,
        adapter=m.adapter,
        attack_success_rate=round(m.attack_success_rate, 4),
        safety=round(m.safety, 4),
        helpfulness=round(m.helpfulness, 4),
        over_refusal=round(m.over_refusal, 4),
        why=why,
        exported=exported,
    )
