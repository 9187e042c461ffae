"""Judges: score (prompt, response) for one objective on 1..5; ensembles combine them.

Only light modules are imported here; the classifier judge imports torch/transformers when it
first scores, and the LLM judge talks to an engine the provider creates on demand. The panel
(`selfmoa.judges.panel`) runs every judge of a spec over a batch of responses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfmoa.api.spec import AlignmentRunSpec, JudgeFormat, JudgeKind, JudgeSpec, Objective
from selfmoa.judges.base import (
    Judge,
    JudgeCoverageError,
    JudgeError,
    JudgeProgress,
    Verdict,
)
from selfmoa.judges.formats import parse_score
from selfmoa.judges.gold import GoldJudge, gold_scores
from selfmoa.judges.heuristic import HeuristicJudge
from selfmoa.judges.llm import BOTH_OBJECTIVES, LLMJudge

if TYPE_CHECKING:
    from selfmoa.engines.provider import EngineProvider

__all__ = [
    "GoldJudge",
    "HeuristicJudge",
    "Judge",
    "JudgeCoverageError",
    "JudgeError",
    "JudgeProgress",
    "LLMJudge",
    "Verdict",
    "build_judge",
    "build_judges",
    "gold_scores",
    "parse_score",
]


def _check(js: JudgeSpec) -> None:
    if js.format != JudgeFormat.rubric and js.kind != JudgeKind.llm:
        raise JudgeError(f"judge '{js.name}': format {js.format.value} needs kind llm")
    if js.format not in BOTH_OBJECTIVES and js.objective != Objective.safety:
        raise JudgeError(f"judge '{js.name}': format {js.format.value} judges safety only")


def _build(js: JudgeSpec, provider: EngineProvider) -> Judge:
    if js.kind == JudgeKind.heuristic:
        return HeuristicJudge(
            js.name, js.objective, weight=js.weight, noise=js.noise, seed=js.seed, strict=js.strict
        )
    if js.kind == JudgeKind.gold:
        return GoldJudge(js.name, js.objective, weight=js.weight)
    # The spec validator makes llm and classifier judges name a model.
    assert js.model is not None
    if js.kind == JudgeKind.llm:
        return LLMJudge(
            js.name,
            js.objective,
            provider.for_model(js.model),
            weight=js.weight,
            fmt=js.format,
            min_coverage=js.min_coverage,
        )
    if js.kind == JudgeKind.embedding:
        from selfmoa.judges.embedding import EmbeddingJudge

        return EmbeddingJudge(
            js.name,
            js.objective,
            provider.model_path(js.model),
            weight=js.weight,
            min_coverage=js.min_coverage,
        )
    from selfmoa.judges.classifier import ClassifierJudge

    return ClassifierJudge(js.name, js.objective, provider.model_path(js.model), weight=js.weight)


def build_judge(js: JudgeSpec, provider: EngineProvider) -> Judge:
    """The judge `js` describes; `JudgeError` (one line) for a combination that can't work."""
    _check(js)
    judge = _build(js, provider)
    judge.min_coverage = js.min_coverage
    return judge


def build_judges(spec: AlignmentRunSpec, provider: EngineProvider) -> list[Judge]:
    """Every judge of `spec.judges`, in order (gold ones included; callers keep them apart)."""
    return [build_judge(js, provider) for js in spec.judges]
