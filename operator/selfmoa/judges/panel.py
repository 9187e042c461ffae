"""The judge panel: every weak judge gives a verdict on every response; ensembles combine them.

`judge_responses` is what the judge and evaluate stages call. Per judge it checks the contract
(one verdict per item, scores within 1..5) and coverage: a judge that scored fewer than its
`min_coverage` share of the items raises `JudgeCoverageError` with one line naming the judge, its
coverage and its commonest error, so no metric is ever computed from a judge that said nothing.
Unscored items (with their reasons) are counted per judge in the summary, with a few examples.

The gold judge (tiny profile), when asked for, is recorded beside the ensemble and never enters it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any, Protocol

from selfmoa.api.spec import AlignmentRunSpec, EnsembleSpec, JudgeKind, Objective
from selfmoa.judges import build_judges
from selfmoa.judges.base import (
    HIGH,
    LOW,
    Judge,
    JudgeCoverageError,
    JudgeError,
    JudgeProgress,
    Verdict,
    reason_kind,
)
from selfmoa.judges.ensemble import Combined, Vote, agreement, agreement_rate, combine
from selfmoa.judges.gold import gold_scores
from selfmoa.judges.llm import NOT_SENT, LLMJudge
from selfmoa.run.records import JudgmentRecord, ResponseRecord, Scores

if TYPE_CHECKING:
    from selfmoa.engines.provider import EngineProvider

__all__ = [
    "JudgeCoverageError",
    "JudgeError",
    "PanelProgress",
    "check_coverage",
    "judge_responses",
    "summarize",
]

#: Unscored examples kept per judge in the summary.
EXAMPLES = 3

Verdicts = dict[str, list[Verdict]]
Ensembles = dict[Objective, list[Combined]]


class PanelProgress(Protocol):
    """`(done, total, description)`, as a stage reports progress."""

    def __call__(self, done: int, total: int, description: str = "") -> None: ...


def _no_progress(done: int, total: int, description: str = "") -> None:
    return None


@dataclass
class _Tracker:
    """Items judged so far over all judges; never reported backwards (a judge that retries its
    items one by one starts counting again)."""

    report: PanelProgress
    total: int
    done: int = 0

    def at(self, done: int) -> None:
        if done > self.done:
            self.done = done
            self.report(done, self.total, "judging")

    def after(self, offset: int) -> JudgeProgress:
        return lambda k: self.at(offset + k)


# ----------------------------------------------------------------------------- the panel


def judge_responses(
    spec: AlignmentRunSpec,
    provider: EngineProvider,
    responses: list[ResponseRecord],
    *,
    gold: bool,
    progress: PanelProgress | None = None,
    judges: Sequence[Judge] | None = None,
) -> tuple[list[JudgmentRecord], dict[str, Any]]:
    """Judge `responses` with the spec's judges; (judgments, summary).

    `judges` overrides the ones built from the spec (tests, callers that cache them). Raises
    `JudgeCoverageError` when a judge covers too few items, `JudgeError` when one breaks its
    contract.
    """
    panel = list(judges) if judges is not None else build_judges(spec, provider)
    weak = [j for j in panel if j.kind != JudgeKind.gold]
    n = len(responses)
    tracker = _Tracker(progress or _no_progress, n * (len(weak) + (1 if gold else 0)))
    tracker.report(0, tracker.total, "judging")
    verdicts = {j.name: run_judge(j, responses, tracker.after(i * n)) for i, j in enumerate(weak)}
    golds = gold_scores(responses) if gold else []
    tracker.at(tracker.total)
    combined = _combine(spec.ensemble, weak, verdicts, responses)
    judgments = [
        _judgment(r, resp, weak, verdicts, combined, golds) for r, resp in enumerate(responses)
    ]
    return judgments, summarize(spec, weak, verdicts, combined, judgments, golds)


def run_judge(
    judge: Judge, responses: Sequence[ResponseRecord], progress: JudgeProgress
) -> list[Verdict]:
    """One judge's verdicts, checked: one per item, in range, enough of them scored."""
    verdicts = judge.judge_batch(responses, progress=progress)
    n = len(responses)
    if len(verdicts) != n:
        raise JudgeError(f"judge '{judge.name}' returned {len(verdicts)} verdicts for {n} items")
    for v in verdicts:
        # `not LOW <= s <= HIGH` also catches NaN.
        if v.score is not None and not LOW <= v.score <= HIGH:
            raise JudgeError(f"judge '{judge.name}' gave score {v.score} outside 1..5")
    progress(n)
    check_coverage(judge.name, verdicts, judge.min_coverage)
    return verdicts


def check_coverage(name: str, verdicts: Sequence[Verdict], min_coverage: float) -> None:
    """`JudgeCoverageError` when fewer than `min_coverage` of `verdicts` have a score."""
    n = len(verdicts)
    scored = sum(v.score is not None for v in verdicts)
    if n == 0 or scored >= math.ceil(min_coverage * n - 1e-9):
        return
    line = (
        f"judge '{name}' scored {scored}/{n} items ({scored / n:.0%}, min {min_coverage:.0%}); "
        f"commonest error: {_commonest(verdicts)}"
    )
    unsent = sum(v.reason == NOT_SENT for v in verdicts)
    if unsent:
        line += f"; {unsent} not sent after too many failures"
    raise JudgeCoverageError(line)


def _commonest(verdicts: Sequence[Verdict]) -> str:
    reasons = [v.reason or "no reason" for v in verdicts if v.score is None]
    counted = [r for r in reasons if r != NOT_SENT] or reasons
    kind, count = Counter(reason_kind(r) for r in counted).most_common(1)[0]
    example = next(r for r in counted if reason_kind(r) == kind)
    detail = example.partition(":")[2].strip()
    return f"{kind} ({count})" + (f": {detail}" if detail else "")


# ----------------------------------------------------------------------------- records


def _objectives(weak: Sequence[Judge]) -> list[Objective]:
    return [o for o in Objective if any(j.objective == o for j in weak)]


def _combine(
    ens: EnsembleSpec,
    weak: Sequence[Judge],
    verdicts: Verdicts,
    responses: Sequence[ResponseRecord],
) -> Ensembles:
    def one(o: Objective, r: int, rid: str) -> Combined:
        votes = [Vote(verdicts[j.name][r].score, j.weight) for j in weak if j.objective == o]
        return combine(
            votes,
            ens.method,
            threshold=ens.threshold,
            bootstrap_samples=ens.bootstrap_samples,
            key=f"{rid}:{o.value}",
        )

    return {
        o: [one(o, r, resp["id"]) for r, resp in enumerate(responses)] for o in _objectives(weak)
    }


def _judgment(
    r: int,
    resp: ResponseRecord,
    weak: Sequence[Judge],
    verdicts: Verdicts,
    combined: Ensembles,
    golds: Sequence[Scores],
) -> JudgmentRecord:
    def score(o: Objective) -> float | None:
        return combined[o][r].score if o in combined else None

    row = JudgmentRecord(
        **resp,  # type: ignore[typeddict-item]
        votes={
            o.value: {j.name: verdicts[j.name][r].score for j in weak if j.objective == o}
            for o in combined
        },
        scores=Scores(safety=score(Objective.safety), helpfulness=score(Objective.helpfulness)),
        labels={o.value: c[r].label for o, c in combined.items()},
        spread={o.value: c[r].spread for o, c in combined.items()},
    )
    mine = {j.name: verdicts[j.name][r] for j in weak}
    # Only when there is something to say: judgments of fully scored runs stay as they were.
    unscored = {name: v.reason or "no reason" for name, v in mine.items() if v.score is None}
    if unscored:
        row["unscored"] = unscored
    refusal = {name: v.refusal for name, v in mine.items() if v.refusal is not None}
    if refusal:
        row["refusal"] = refusal
    outcomes = {name: v.outcome for name, v in mine.items() if v.outcome is not None}
    if outcomes:
        row["outcomes"] = outcomes
    if golds:
        row["gold"] = golds[r]
    return row


# ----------------------------------------------------------------------------- summary


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(fmean(vals), 4) if vals else None


def _label(score: float | None, threshold: float) -> bool | None:
    return None if score is None else score >= threshold


def _judge_info(
    judge: Judge, verdicts: Sequence[Verdict], responses: Sequence[ResponseRecord]
) -> dict[str, Any]:
    n = len(verdicts)
    scores = [v.score for v in verdicts]
    scored = sum(s is not None for s in scores)
    reasons = Counter(reason_kind(v.reason or "no reason") for v in verdicts if v.score is None)
    info: dict[str, Any] = {
        "objective": judge.objective.value,
        "kind": judge.kind.value,
        "weight": judge.weight,
        "scored": scored,
        "coverage": round(scored / n, 4) if n else None,
        "min_coverage": judge.min_coverage,
        "unscored": dict(reasons.most_common()),
        "unparsable": reasons.get("unparsable", 0),
        "mean": _mean(scores),
    }
    if isinstance(judge, LLMJudge):
        info["format"] = judge.format.value
    stated = [v.refusal for v in verdicts if v.refusal is not None]
    if stated:
        info["refusals"] = {"yes": sum(stated), "no": len(stated) - sum(stated)}
    categories = Counter(c for v in verdicts for c in v.categories)
    if categories:
        info["categories"] = dict(categories.most_common())
    examples = [
        {"id": resp["id"], "reason": v.reason, "reply": v.reply}
        for v, resp in zip(verdicts, responses, strict=True)
        if v.score is None
    ]
    if examples:
        info["unscored_examples"] = examples[:EXAMPLES]
    return info


def _objective_info(
    o: Objective,
    comb: Sequence[Combined],
    per_judge: dict[str, list[bool | None]],
    judgments: Sequence[JudgmentRecord],
    golds: Sequence[Scores],
    threshold: float,
) -> dict[str, Any]:
    labels = [c.label for c in comb]
    entry: dict[str, Any] = {
        "mean": _mean([c.score for c in comb]),
        "unscored": sum(c.score is None for c in comb),
        "good_rate": _mean([float(x) for x in labels if x is not None]),
        "mean_spread": _mean([c.spread for c in comb]),
        "by_kind": {
            kind: _mean(
                [c.score for c, jr in zip(comb, judgments, strict=True) if jr["kind"] == kind]
            )
            for kind in sorted({jr["kind"] for jr in judgments})
        },
        "agreement": agreement(per_judge, labels),
    }
    if golds:
        gold_labels = [_label(g[o.value], threshold) for g in golds]  # type: ignore[literal-required]
        entry["gold_mean"] = _mean([g[o.value] for g in golds])  # type: ignore[literal-required]
        # How often the weak supervision says what the strong one says: the quantity
        # weak-to-strong generalization works with.
        entry["gold_agreement"] = {
            "ensemble": agreement_rate(labels, gold_labels)[0],
            **{name: agreement_rate(ls, gold_labels)[0] for name, ls in per_judge.items()},
        }
    return entry


def summarize(
    spec: AlignmentRunSpec,
    weak: Sequence[Judge],
    verdicts: Verdicts,
    combined: Ensembles,
    judgments: Sequence[JudgmentRecord],
    golds: Sequence[Scores],
) -> dict[str, Any]:
    """The judge stage's manifest summary."""
    threshold = spec.ensemble.threshold
    judges_info = {j.name: _judge_info(j, verdicts[j.name], judgments) for j in weak}
    objectives: dict[str, Any] = {}
    for o, comb in combined.items():
        per_judge = {
            j.name: [_label(v.score, threshold) for v in verdicts[j.name]]
            for j in weak
            if j.objective == o
        }
        objectives[o.value] = _objective_info(o, comb, per_judge, judgments, golds, threshold)
    return {
        "responses": len(judgments),
        "method": spec.ensemble.method.value,
        "threshold": threshold,
        "judges": judges_info,
        "unparsable": {name: info["unparsable"] for name, info in judges_info.items()},
        "unscored": {name: info["unscored"] for name, info in judges_info.items()},
        "coverage": {name: info["coverage"] for name, info in judges_info.items()},
        "objectives": objectives,
        "mean_scores": {o: e["mean"] for o, e in objectives.items()},
        "gold": bool(golds),
    }
