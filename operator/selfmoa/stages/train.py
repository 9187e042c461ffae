"""The train stage: preference optimization (TRL DPO + PEFT LoRA) on this iteration's pairs.

Inputs: `pairs/pairs.jsonl` (and `pairs/gold-pairs.jsonl` with `evaluation.ceiling`), the base
model, and the adapter of the parent iteration (`ctx.parent`, chosen by the planner).
Outputs: `adapter/` (loads on the base model with PEFT or vLLM's LoRA support),
`train_log.json` (one entry per optimizer step), and with the ceiling `ceiling-adapter/` +
`ceiling_log.json`: the same training on gold-judged pairs, the strong ceiling of PGR.

Zero pairs is a normal outcome of a strict pair filter: nothing is trained, the adapter is a
copy of the parent's (or an untrained, identity LoRA when the parent is the base model), and the
summary says `trained: false`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmoa.run import layout
from selfmoa.stages.base import StageContext, StageError, StageOutput

if TYPE_CHECKING:
    from selfmoa.training.dpo import DPOResult

GOLD_PAIRS = layout.GOLD_PAIRS
TRAIN_LOG = "train_log.json"
CEILING_LOG = "ceiling_log.json"


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    if ctx.iteration < 1:
        raise StageError(f"train runs in iterations >= 1, not {ctx.iteration}")
    from selfmoa.training import distributed

    # `serving.device` decides (auto: CUDA when torch sees one); `cuda` without a GPU fails
    # here at once, in one line.
    distributed.use_device(ctx.engines.device())
    spec = ctx.spec
    result = _train(ctx, ctx.read_jsonl("pairs", layout.PAIRS), layout.ADAPTER, "training")
    out.upload_dir(layout.ADAPTER, result.adapter)
    out.write_json(TRAIN_LOG, result.log)
    summary = _summary(result, spec.training.loss.value, ctx.parent)
    if spec.evaluation.ceiling:
        if not ctx.store.exists(ctx.key("pairs", GOLD_PAIRS)):
            raise StageError(
                "evaluation.ceiling is set but the pairs stage wrote no "
                f"{ctx.key('pairs', GOLD_PAIRS)} (gold-judged pairs)"
            )
        gold = ctx.read_jsonl("pairs", GOLD_PAIRS)
        ceiling = _train(ctx, gold, layout.CEILING_ADAPTER, "training ceiling")
        out.upload_dir(layout.CEILING_ADAPTER, ceiling.adapter)
        out.write_json(CEILING_LOG, ceiling.log)
        summary["ceiling"] = _summary(ceiling, spec.training.loss.value, ctx.parent)
    return summary


def _train(ctx: StageContext, pairs: list[dict[str, Any]], name: str, label: str) -> DPOResult:
    """DPO from the parent iteration's adapter on `pairs`; the adapter is written locally."""
    from selfmoa.training.dpo import train_dpo
    from selfmoa.training.objectives import build_rows

    spec = ctx.spec
    rows = build_rows(
        pairs, spec.training, weights=spec.preferences.weights, threshold=spec.ensemble.threshold
    )
    return train_dpo(
        base_path=ctx.engines.model_path(spec.policy.model),
        parent_adapter=ctx.fetch_adapter(ctx.adapter_key(ctx.parent)),
        rows=rows,
        training=spec.training,
        workdir=ctx.workdir / f"trainer-{name}",
        dest=ctx.workdir / f"out-{name}",
        progress=ctx.progress,
        label=label,
    )


def _summary(r: DPOResult, loss: str, parent: int) -> dict[str, Any]:
    steps_per_s = r.steps / r.seconds if r.seconds > 0 and r.steps else None
    return {
        "trained": r.pairs > 0,
        "pairs": r.pairs,
        "dropped_pairs": r.dropped,
        "tokens": r.tokens,
        "steps": r.steps,
        "final_loss": r.final_loss,
        "reward_accuracy": r.reward_accuracy,
        "seconds": round(r.seconds, 3),
        "steps_per_second": round(steps_per_s, 3) if steps_per_s else None,
        "loss": loss,
        "parent": parent,
        "continued_adapter": r.continued,
        "note": None if r.pairs else _why_untrained(r),
    }


def _why_untrained(r: DPOResult) -> str:
    what = "parent's adapter" if r.continued else "an untrained LoRA on the base model"
    if r.dropped:
        return f"all {r.dropped} pairs have prompts longer than training.maxLength: kept the {what}"
    return f"no pairs: kept the {what}"
