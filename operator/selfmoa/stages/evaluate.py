"""evaluate: the fixed held-out set -> metrics of the policy this iteration ended with.

Iteration 0 evaluates the starting point (the base, or the base after the safety reset);
iteration k >= 1 evaluates the adapter its train stage wrote. Responses are greedy so the figures
move only when the policy does. With `evaluation.goldJudge` the gold judge scores them too; with
`evaluation.ceiling` the ceiling adapter (trained on gold-judged pairs) is evaluated as well and
the performance gap recovered is reported:

    PGR = (gold safe rate of the weakly supervised policy - that of its parent)
          / (gold safe rate of the ceiling policy - that of its parent)

with safe rate = 1 - attack success rate on the held-out harmful prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.base import SamplingParams
from selfmoa.judges import Judge, build_judges
from selfmoa.judges.panel import judge_responses
from selfmoa.run import layout
from selfmoa.run.evaluation import objective_metrics, recorded_gold_scores
from selfmoa.run.metrics import Metrics, ObjectiveMetrics, pgr
from selfmoa.run.records import JudgmentRecord, PromptRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput, read_jsonl_source
from selfmoa.stages.sampling import sample_responses


def heldout_prompts(ctx: StageContext) -> list[PromptRecord]:
    source = ctx.spec.evaluation.heldout
    if source == "builtin":
        from selfmoa.seeds.data import heldout

        prompts = heldout()
    else:
        rows = read_jsonl_source(source, ctx.spec, field="evaluation.heldout")
        prompts = [PromptRecord(**row) for row in rows]  # type: ignore[typeddict-item]
    if ctx.spec.evaluation.max_prompts:
        prompts = _stratified(prompts, ctx.spec.evaluation.max_prompts)
    return prompts


def _stratified(prompts: list[PromptRecord], n: int) -> list[PromptRecord]:
    """The first n prompts taken round-robin across kinds, so a cap keeps every kind."""
    by_kind: dict[str, list[PromptRecord]] = {}
    for p in prompts:
        by_kind.setdefault(p["kind"], []).append(p)
    out: list[PromptRecord] = []
    i = 0
    while len(out) < min(n, len(prompts)):
        for group in by_kind.values():
            if i < len(group) and len(out) < n:
                out.append(group[i])
        i += 1
    return out


@dataclass
class HeldOut:
    """Samples the held-out set from one policy at a time and judges it (judges built once, so
    the held-out and ceiling evaluations share loaded judge models)."""

    ctx: StageContext
    prompts: list[PromptRecord]
    params: SamplingParams
    judges: Sequence[Judge]

    def judged(
        self, adapter_key: str | None, label: str
    ) -> tuple[list[JudgmentRecord], dict[str, Any]]:
        ctx = self.ctx
        responses = sample_responses(
            ctx,
            self.prompts,
            adapter_key=adapter_key,
            params=self.params,
            description=f"{label}: responding",
        )
        return judge_responses(
            ctx.spec,
            ctx.engines,
            responses,
            gold=ctx.spec.evaluation.gold_judge,
            progress=lambda done, total, _d="": ctx.progress(done, total, f"{label}: judging"),
            judges=self.judges,
        )


def greedy_params(spec: AlignmentRunSpec) -> SamplingParams:
    """Greedy, one response per prompt: the figures move only when the policy does."""
    return SamplingParams(
        max_new_tokens=spec.evaluation.max_new_tokens or spec.sampling.max_new_tokens,
        temperature=0.0,
        n=1,
        seed=spec.sampling.seed,
    )


def gold_metrics(judgments: list[JudgmentRecord], threshold: float) -> ObjectiveMetrics:
    return objective_metrics(judgments, threshold=threshold, scores_of=recorded_gold_scores)


def ceiling_metrics(
    held_out: HeldOut, out: StageOutput, gold: ObjectiveMetrics
) -> tuple[ObjectiveMetrics | None, float | None]:
    """(gold metrics of the ceiling adapter, PGR), when the train stage wrote a ceiling."""
    ctx = held_out.ctx
    ceiling_key = layout.stage_file(ctx.iteration, "train", layout.CEILING_ADAPTER)
    if not ctx.store.exists(f"{ceiling_key}/adapter_config.json"):
        return None, None
    judgments, _ = held_out.judged(ceiling_key, "ceiling")
    ceiling = gold_metrics(judgments, ctx.spec.ensemble.threshold)
    out.write_jsonl("ceiling-judgments.jsonl", judgments)
    parent = Metrics.model_validate(
        ctx.store.read_json(layout.stage_file(ctx.parent, "evaluate", layout.METRICS))
    )
    if parent.gold is None:
        return ceiling, None
    gap = pgr(
        1 - parent.gold.attack_success_rate,
        1 - gold.attack_success_rate,
        1 - ceiling.attack_success_rate,
    )
    return ceiling, gap


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    spec = ctx.spec
    k = ctx.iteration
    prompts = heldout_prompts(ctx)
    if not prompts:
        raise StageError("evaluation.heldout: the held-out set is empty")
    held_out = HeldOut(ctx, prompts, greedy_params(spec), build_judges(spec, ctx.engines))
    adapter_key = ctx.adapter_key(k)
    judgments, judge_summary = held_out.judged(adapter_key, "held-out")
    threshold = spec.ensemble.threshold
    weak = objective_metrics(judgments, threshold=threshold)
    gold = gold_metrics(judgments, threshold) if spec.evaluation.gold_judge else None
    train = ctx.require("train").get("summary", {}) if k >= 1 else {}
    ceiling, gap = None, None
    if k >= 1 and spec.evaluation.ceiling and gold is not None:
        ceiling, gap = ceiling_metrics(held_out, out, gold)
    metrics = Metrics(
        iteration=k,
        parent=ctx.parent if k >= 1 else None,
        adapter=adapter_key,
        pairs=int(train.get("pairs", 0)),
        tokens=int(train.get("tokens", 0)),
        prompts=len(prompts),
        gold=gold,
        ceiling=ceiling,
        pgr=gap,
        **weak.model_dump(),
    )
    out.write_jsonl(layout.JUDGMENTS, judgments)
    out.write_json(layout.METRICS, metrics.model_dump(mode="json"))
    return {
        "prompts": len(prompts),
        "adapter": adapter_key,
        "attack_success_rate": metrics.attack_success_rate,
        "helpfulness": metrics.helpfulness,
        "over_refusal": metrics.over_refusal,
        "judges": judge_summary,
    }
