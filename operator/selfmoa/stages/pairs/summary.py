"""What the pairs stage's summary says: counts and mean scores of the pairs, and the outcome
classes of the sampled responses and of the chosen ones."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import fmean
from typing import Any, Literal

from selfmoa.api.spec import Objective
from selfmoa.judges.base import prompt_of
from selfmoa.run.evaluation import outcome_shares, weak_outcome
from selfmoa.run.metrics import Outcomes
from selfmoa.run.records import JudgmentRecord, PairRecord


def pairs_summary(
    pairs: list[PairRecord],
    judgments: Sequence[JudgmentRecord],
    groups: dict[str, Any],
    skipped: Counter[str],
    use_gold: bool,
) -> dict[str, Any]:
    def mean_of(side: str, objective: str) -> float | None:
        vals = [p[side][objective] for p in pairs if p[side][objective] is not None]  # type: ignore[literal-required]
        return round(fmean(vals), 4) if vals else None

    return {
        "pairs": len(pairs),
        "scores": "gold" if use_gold else "ensemble",
        "responses": len(judgments),
        "prompts": len({j["prompt_id"] for j in judgments}),
        "prompts_with_pairs": len({p["prompt_id"] for p in pairs}),
        "per_kind": dict(sorted(Counter(p["kind"] for p in pairs).items())),
        "per_category": dict(sorted(Counter(p["category"] or "none" for p in pairs).items())),
        "per_strategy": dict(sorted(Counter(p["strategy"] for p in pairs).items())),
        "skipped": dict(sorted(skipped.items())),
        "mean_margin": round(fmean(p["margin"] for p in pairs), 4) if pairs else None,
        "chosen_mean": {o.value: mean_of("chosen_scores", o.value) for o in Objective},
        "rejected_mean": {o.value: mean_of("rejected_scores", o.value) for o in Objective},
    }


def outcome_classes(
    judgments: Sequence[JudgmentRecord], threshold: float
) -> tuple[list[str | None], Literal["gold", "judges"]]:
    """Each response's outcome class, and whose: the gold judge's (tiny profile, when the
    judgments carry gold scores), else the weak judges'."""
    if judgments and all(j.get("gold") for j in judgments):
        from selfmoa.judges import oracle

        gold: list[str | None] = [oracle.outcome(prompt_of(j), j["text"]) for j in judgments]
        return gold, "gold"
    return [weak_outcome(j, threshold) for j in judgments], "judges"


def outcomes(
    judgments: Sequence[JudgmentRecord], pairs: Sequence[PairRecord], threshold: float
) -> dict[str, Any]:
    """{"sampled": Outcomes, "chosen": Outcomes} as JSON (either None when nothing is classed)."""
    classes, src = outcome_classes(judgments, threshold)
    by_id = dict(zip((j["id"] for j in judgments), classes, strict=True))
    rows = {j["id"]: j for j in judgments}
    chosen = [rows[p["chosen_id"]] for p in pairs if p["chosen_id"] in rows]

    def dump(o: Outcomes | None) -> dict[str, Any] | None:
        return None if o is None else o.model_dump(mode="json")

    return {
        "sampled": dump(outcome_shares(judgments, classes, src)),
        "chosen": dump(outcome_shares(chosen, [by_id[j["id"]] for j in chosen], src)),
    }
