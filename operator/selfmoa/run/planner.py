"""The pure state machine of a run: (spec, observed facts) -> the next action.

No I/O, no clock: both executors (the local loop and the Kubernetes operator) gather what they
observe (finished stages, evaluated metrics, a running or failed stage) into `Observed`, call
`next_action`, carry out the one action it returns, and report it with `status`. Calling it
again with the same facts gives the same answer, which is what makes a restarted executor resume
exactly where it was.

Its parts: the vocabulary (`selfmoa.run.actions`), the gate after each evaluation that accepts,
rolls back or stops (`selfmoa.run.gate`), and the status that goes with an action
(`selfmoa.run.conditions`); this module walks the stage table and re-exports them, so an
executor needs only `planner`.
"""

from __future__ import annotations

from selfmoa.api import exits
from selfmoa.api.spec import AlignmentRunSpec, Phase
from selfmoa.run import stage_table
from selfmoa.run.actions import (
    CANNOT_START,
    CANNOT_START_ADVICE,
    Action,
    Finish,
    Observed,
    Reuse,
    RunStage,
    StageFailure,
    Wait,
)
from selfmoa.run.conditions import REUSED, status
from selfmoa.run.gate import Gate, decided_on, gate, parent_of, result_of

__all__ = [
    "CANNOT_START",
    "CANNOT_START_ADVICE",
    "REUSED",
    "Action",
    "Finish",
    "Gate",
    "Observed",
    "Reuse",
    "RunStage",
    "StageFailure",
    "Wait",
    "decided_on",
    "gate",
    "next_action",
    "parent_of",
    "result_of",
    "status",
]


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
