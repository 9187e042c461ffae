"""Judges: score (prompt, response) for one objective on 1..5; ensembles combine them.

Only light modules are imported here; the classifier judge imports torch/transformers when it
first scores, and the LLM judge talks to an engine the provider creates on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfmoa.api.spec import AlignmentRunSpec, JudgeKind, JudgeSpec
from selfmoa.judges.base import Judge, JudgeProgress
from selfmoa.judges.gold import GoldJudge, gold_scores
from selfmoa.judges.heuristic import HeuristicJudge
from selfmoa.judges.llm import LLMJudge, parse_score

if TYPE_CHECKING:
    from selfmoa.engines.provider import EngineProvider

__all__ = [
    "GoldJudge",
    "HeuristicJudge",
    "Judge",
    "JudgeProgress",
    "LLMJudge",
    "build_judge",
    "build_judges",
    "gold_scores",
    "parse_score",
]


def build_judge(js: JudgeSpec, provider: EngineProvider) -> Judge:
    if js.kind == JudgeKind.heuristic:
        return HeuristicJudge(js.name, js.objective, weight=js.weight, noise=js.noise, seed=js.seed)
    if js.kind == JudgeKind.gold:
        return GoldJudge(js.name, js.objective, weight=js.weight)
    # The spec validator makes llm and classifier judges name a model.
    assert js.model is not None
    if js.kind == JudgeKind.llm:
        return LLMJudge(js.name, js.objective, provider.for_model(js.model), weight=js.weight)
    from selfmoa.judges.classifier import ClassifierJudge

    return ClassifierJudge(js.name, js.objective, provider.model_path(js.model), weight=js.weight)


def build_judges(spec: AlignmentRunSpec, provider: EngineProvider) -> list[Judge]:
    """Every judge of `spec.judges`, in order (gold ones included; callers keep them apart)."""
    return [build_judge(js, provider) for js in spec.judges]
