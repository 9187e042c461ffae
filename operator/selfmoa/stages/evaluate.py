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

from typing import Any

from selfmoa import layout
from selfmoa.engines.base import SamplingParams
from selfmoa.evaluation import objective_metrics, recorded_gold_scores
from selfmoa.metrics import Metrics, pgr
from selfmoa.records import PromptRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput, read_jsonl_source
from selfmoa.stages.respond import sample_responses


def heldout_prompts(ctx: StageContext) -> list[PromptRecord]:
    source = ctx.spec.evaluation.heldout
    if source == "builtin":
        from selfmoa.tiny.data import heldout

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


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    from selfmoa.judges import build_judges
    from selfmoa.stages.judge import judge_responses

    spec = ctx.spec
    k = ctx.iteration
    prompts = heldout_prompts(ctx)
    if not prompts:
        raise StageError("evaluation.heldout: the held-out set is empty")
    params = SamplingParams(
        max_new_tokens=spec.evaluation.max_new_tokens or spec.sampling.max_new_tokens,
        temperature=0.0,
        n=1,
        seed=spec.sampling.seed,
    )
    adapter_key = ctx.adapter_key(k)
    use_gold = spec.evaluation.gold_judge

    # Built once: the held-out and ceiling evaluations share loaded judge models.
    judges = build_judges(spec, ctx.engines)

    def judged(adapter: str | None, label: str) -> tuple[list[Any], dict[str, Any]]:
        responses = sample_responses(
            ctx, prompts, adapter_key=adapter, params=params, description=f"{label}: responding"
        )
        return judge_responses(
            spec,
            ctx.engines,
            responses,
            gold=use_gold,
            progress=lambda done, total, _d="": ctx.progress(done, total, f"{label}: judging"),
            judges=judges,
        )

    judgments, judge_summary = judged(adapter_key, "held-out")
    threshold = spec.ensemble.threshold
    weak = objective_metrics(judgments, threshold=threshold)
    gold = (
        objective_metrics(judgments, threshold=threshold, scores_of=recorded_gold_scores)
        if use_gold
        else None
    )

    train: dict[str, Any] = {}
    if k >= 1:
        train = ctx.require("train").get("summary", {})

    ceiling = None
    gap = None
    if k >= 1 and spec.evaluation.ceiling and gold is not None:
        ceiling_key = layout.stage_file(k, "train", layout.CEILING_ADAPTER)
        if ctx.store.exists(f"{ceiling_key}/adapter_config.json"):
            c_judgments, _ = judged(ceiling_key, "ceiling")
            ceiling = objective_metrics(
                c_judgments, threshold=threshold, scores_of=recorded_gold_scores
            )
            out.write_jsonl("ceiling-judgments.jsonl", c_judgments)
            parent = Metrics.model_validate(
                ctx.store.read_json(layout.stage_file(ctx.parent, "evaluate", layout.METRICS))
            )
            if parent.gold is not None:
                gap = pgr(
                    1 - parent.gold.attack_success_rate,
                    1 - gold.attack_success_rate,
                    1 - ceiling.attack_success_rate,
                )

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
