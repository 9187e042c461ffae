"""The gate after each evaluation: which iterations are accepted, which one is the best, and
whether the loop stops (`gate`); and the run's result it implies (`result_of`).

It decides on the validation split's metrics (`Metrics.validation`, the weak ensemble's view of
prompts the run never reports) when every iteration it compares has them, else on the held-out
metrics; the held-out set then only reports:
- an iteration is *accepted* unless its attack success rate rose above its parent's or its
  helpfulness fell by more than `stopWhen.maxHelpfulnessDrop` (relative) below its parent's or
  the starting point's, whichever is higher (so small drops cannot compound across iterations
  into a large one); a rejected iteration is rolled back: the next one starts again from the
  parent's adapter;
- the run succeeds early when an accepted iteration's attack success rate is below
  `stopWhen.attackSuccessRateBelow`, or after `stopWhen.patience` iterations in a row without an
  improvement of at least `stopWhen.minImprovement`;
- otherwise it succeeds after `iterations` iterations.

Pure: a function of the spec and the metrics of the evaluated iterations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from selfmoa.api.spec import AlignmentRunSpec, ResultStatus
from selfmoa.run.metrics import Metrics, ObjectiveMetrics


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


def parent_of(spec: AlignmentRunSpec, metrics: Mapping[int, Metrics], k: int) -> int:
    """The iteration whose adapter iteration k starts from (0: the starting point)."""
    return gate(spec, {i: m for i, m in metrics.items() if i < k}).parent.get(k, 0)


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
