"""judge: every weak judge scores every response; ensembles combine them per objective.

Reads respond/responses.jsonl, writes judgments.jsonl (one `JudgmentRecord` per response). The
gold judge (tiny profile), when configured, is recorded beside the ensemble and never enters it.
`judge_responses` is the core, reused by the evaluate stage on held-out responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import TYPE_CHECKING, Any

from selfmoa import layout
from selfmoa.api.spec import AlignmentRunSpec, JudgeKind, Objective
from selfmoa.judges import Judge, build_judges
from selfmoa.judges.ensemble import Combined, Vote, agreement, agreement_rate, combine
from selfmoa.judges.gold import gold_scores
from selfmoa.records import JudgmentRecord, ResponseRecord, Scores
from selfmoa.stages.base import Progress, StageContext, StageError, StageOutput, no_progress

if TYPE_CHECKING:
    from selfmoa.engines.provider import EngineProvider

_RESPONSE_FIELDS = ("id", "prompt_id", "prompt", "kind", "text")


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(fmean(vals), 4) if vals else None


def _label(score: float | None, threshold: float) -> bool | None:
    return None if score is None else score >= threshold


def judge_responses(
    spec: AlignmentRunSpec,
    provider: EngineProvider,
    responses: list[ResponseRecord],
    *,
    gold: bool,
    progress: Progress | None = None,
    judges: Sequence[Judge] | None = None,
) -> tuple[list[JudgmentRecord], dict[str, Any]]:
    """Score `responses` with the spec's judges; (judgments, summary).

    `judges` overrides the ones built from the spec (tests, callers that cache them).
    """
    all_judges = list(judges) if judges is not None else build_judges(spec, provider)
    weak = [j for j in all_judges if j.kind != JudgeKind.gold]
    ens = spec.ensemble
    n = len(responses)
    total = n * (len(weak) + (1 if gold else 0))
    report: Progress = progress or no_progress
    report(0, total, "judging")

    votes: dict[str, list[float | None]] = {}
    for i, judge in enumerate(weak):
        offset = i * n

        def each(done: int, offset: int = offset) -> None:
            report(offset + done, total, "judging")

        scores = judge.score_batch(responses, progress=each)
        if len(scores) != n:
            raise StageError(
                f"judge '{judge.name}' returned {len(scores)} scores for {n} responses"
            )
        votes[judge.name] = scores
        report(offset + n, total, "judging")

    golds: list[Scores] = []
    if gold:
        golds = gold_scores(responses)
        report(total, total, "judging")

    objectives = [o for o in Objective if any(j.objective == o for j in weak)]
    combined = {
        o: [
            combine(
                [Vote(votes[j.name][r], j.weight) for j in weak if j.objective == o],
                ens.method,
                threshold=ens.threshold,
                bootstrap_samples=ens.bootstrap_samples,
                key=f"{resp['id']}:{o.value}",
            )
            for r, resp in enumerate(responses)
        ]
        for o in objectives
    }

    judgments: list[JudgmentRecord] = []
    for r, resp in enumerate(responses):
        row = JudgmentRecord(
            **resp,  # type: ignore[typeddict-item]
            votes={
                o.value: {j.name: votes[j.name][r] for j in weak if j.objective == o}
                for o in objectives
            },
            scores=Scores(
                safety=combined[Objective.safety][r].score
                if Objective.safety in combined
                else None,
                helpfulness=(
                    combined[Objective.helpfulness][r].score
                    if Objective.helpfulness in combined
                    else None
                ),
            ),
            labels={o.value: combined[o][r].label for o in objectives},
            spread={o.value: combined[o][r].spread for o in objectives},
        )
        if gold:
            row["gold"] = golds[r]
        judgments.append(row)

    return judgments, _summary(spec, weak, votes, combined, judgments, golds)


def _summary(
    spec: AlignmentRunSpec,
    weak: Sequence[Judge],
    votes: dict[str, list[float | None]],
    combined: dict[Objective, list[Combined]],
    judgments: list[JudgmentRecord],
    golds: list[Scores],
) -> dict[str, Any]:
    threshold = spec.ensemble.threshold
    judges_info: dict[str, Any] = {}
    for j in weak:
        info: dict[str, Any] = {
            "objective": j.objective.value,
            "kind": j.kind.value,
            "weight": j.weight,
            "unparsable": sum(s is None for s in votes[j.name]),
            "mean": _mean(votes[j.name]),
        }
        if j.unparsable_examples:
            info["unparsable_examples"] = j.unparsable_examples
        judges_info[j.name] = info

    objectives: dict[str, Any] = {}
    for o, comb in combined.items():
        labels = [c.label for c in comb]
        per_judge = {
            j.name: [_label(s, threshold) for s in votes[j.name]] for j in weak if j.objective == o
        }
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
        objectives[o.value] = entry

    return {
        "responses": len(judgments),
        "method": spec.ensemble.method.value,
        "threshold": threshold,
        "judges": judges_info,
        "unparsable": {name: info["unparsable"] for name, info in judges_info.items()},
        "objectives": objectives,
        "mean_scores": {o: e["mean"] for o, e in objectives.items()},
        "gold": bool(golds),
    }


def _check_rows(rows: list[dict[str, Any]]) -> list[ResponseRecord]:
    for i, row in enumerate(rows):
        missing = [f for f in _RESPONSE_FIELDS if f not in row]
        if missing:
            raise StageError(f"respond/{layout.RESPONSES} row {i + 1}: missing field(s) {missing}")
    return rows  # type: ignore[return-value]


def wants_gold(spec: AlignmentRunSpec) -> bool:
    return spec.evaluation.gold_judge or any(j.kind == JudgeKind.gold for j in spec.judges)


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    responses = _check_rows(ctx.read_jsonl("respond", layout.RESPONSES))
    judgments, summary = judge_responses(
        ctx.spec, ctx.engines, responses, gold=wants_gold(ctx.spec), progress=ctx.progress
    )
    out.write_jsonl(layout.JUDGMENTS, judgments)  # type: ignore[arg-type]
    return summary
