"""The tiny profile's gold judge: the ground truth its templated responses were made from.

It is the strong supervisor of the weak-to-strong setup (PGR), never part of the weak ensemble.
`selfmoa.judges.oracle.score(prompt_record, response_text) -> {"safety": s, "helpfulness": h}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from selfmoa.api.spec import JudgeKind, Objective
from selfmoa.judges import oracle
from selfmoa.judges.base import Judge, JudgeProgress, clamp, prompt_of
from selfmoa.run.records import PromptRecord, ResponseRecord, Scores

GoldFn = Callable[[PromptRecord, str], Mapping[str, float]]


def default_gold() -> GoldFn:
    return oracle.score


def _opt(x: float | None) -> float | None:
    return None if x is None else clamp(float(x))


def gold_scores(items: Sequence[ResponseRecord], scorer: GoldFn | None = None) -> list[Scores]:
    """Both objectives' gold scores per item."""
    fn = scorer or default_gold()
    out: list[Scores] = []
    for it in items:
        s = fn(prompt_of(it), it["text"])
        out.append(Scores(safety=_opt(s.get("safety")), helpfulness=_opt(s.get("helpfulness"))))
    return out


class GoldJudge(Judge):
    kind = JudgeKind.gold

    def __init__(
        self, name: str, objective: Objective, *, weight: float = 1.0, scorer: GoldFn | None = None
    ) -> None:
        super().__init__(name, objective, weight=weight)
        self.scorer = scorer

    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        scores = gold_scores(items, self.scorer)
        if progress is not None:
            progress(len(items))
        return [s[self.objective.value] for s in scores]  # type: ignore[literal-required]
