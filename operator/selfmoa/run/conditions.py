"""The status that goes with the planner's action: phase, position, metrics per iteration, the
result, and the conditions (`Progressing`, `Succeeded`, `Failed`, and `StagesReused`) that
`kubectl wait` reads.

One rule for both executors: the local loop calls `status` after each decision, the operator's
reconcile plan (`selfmoa.controller.plan`) calls it for the status it patches. Pure: the clock
comes in as `now`, and a condition keeps its transition time while its status stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus, Condition, IterationStatus, Phase
from selfmoa.run.actions import Action, Observed, Reuse, RunStage, Wait
from selfmoa.run.gate import Gate, gate, result_of
from selfmoa.run.metrics import Metrics

#: The condition type saying that an earlier run's finished stages were taken over.
REUSED = "StagesReused"


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
    best = observed.metrics.get(g.best)
    phase, it, stage, reason, message = _position(action, observed, previous)
    return AlignmentRunStatus(
        phase=phase,
        iteration=it,
        stage=stage,
        safety=None if best is None else round(best.safety, 4),
        helpfulness=None if best is None else round(best.helpfulness, 4),
        message=message,
        conditions=conditions(
            phase, reason, message, previous, observed.reused, now=now, generation=generation
        ),
        iterations=_iterations(observed.metrics, g),
        artifacts=artifacts,
        observed_generation=generation,
        attempts=previous.attempts if previous else {},
        result=result_of(g, observed.metrics, observed.exported),
    )


def _position(
    action: Action, observed: Observed, previous: AlignmentRunStatus | None
) -> tuple[Phase, int | None, str | None, str, str]:
    """(phase, iteration, stage, reason, message) the action puts the run in."""
    if isinstance(action, RunStage):
        return (
            Phase.running,
            action.iteration,
            action.stage,
            "StageStarted",
            f"running stage {action.stage} of iteration {action.iteration}",
        )
    last = previous.iteration if previous else None
    if isinstance(action, Wait):
        phase = Phase.suspended if action.reason == "Suspended" else Phase.running
        it, stage = observed.running if observed.running else (last, None)
        return phase, it, stage, action.reason, action.message
    return action.phase, last, None, action.reason, action.message


def _iterations(metrics: Mapping[int, Metrics], g: Gate) -> list[IterationStatus]:
    """One entry per evaluated iteration, with the gate's verdict on it."""
    out = []
    for k in sorted(metrics):
        m = metrics[k]
        out.append(
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
    return out


def conditions(
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
    out = []
    for ctype, value in conds.items():
        s: Literal["True", "False"] = "True" if value else "False"
        prev = old.get(ctype)
        ts = prev.last_transition_time if prev is not None and prev.status == s else now
        out.append(
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
        out.append(
            Condition(
                type=REUSED,
                status="True",
                reason="EarlierRunResumed",
                message=f"{reused.stages} finished stage(s) reused from {reused.source}",
                last_transition_time=prev.last_transition_time if prev is not None else now,
                observed_generation=generation,
            )
        )
    return out


def _rounded(shares: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {c: round(v, 4) for c, v in by.items()} for k, by in shares.items()}
