"""respond: the current policy (base + the parent iteration's adapter) samples N responses per prompt."""

from __future__ import annotations

from collections import Counter
from typing import Any

from selfmoa.engines.base import SamplingParams
from selfmoa.run import layout
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageContext, StageOutput
from selfmoa.stages.sampling import sample_responses


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    prompts: list[PromptRecord] = ctx.read_jsonl("redteam", layout.PROMPTS)  # type: ignore[assignment]
    s = ctx.spec.sampling
    params = SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        n=s.responses_per_prompt,
        seed=s.seed + ctx.iteration,
    )
    adapter_key = ctx.adapter_key(ctx.parent)
    rows = sample_responses(
        ctx, prompts, adapter_key=adapter_key, params=params, description="sampling"
    )
    out.write_jsonl(layout.RESPONSES, rows)
    return {
        "prompts": len(prompts),
        "responses": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "by_kind": dict(Counter(r["kind"] for r in rows)),
        "adapter": adapter_key,
        "parent": ctx.parent,
        "model": ctx.spec.policy.model,
    }
