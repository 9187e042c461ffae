"""respond: the current policy (base + the parent iteration's adapter) samples N responses per prompt."""

from __future__ import annotations

from typing import Any

from selfmoa import layout
from selfmoa.engines.base import SamplingParams, user
from selfmoa.records import PromptRecord, ResponseRecord
from selfmoa.stages.base import StageContext, StageOutput


def sample_responses(
    ctx: StageContext,
    prompts: list[PromptRecord],
    *,
    adapter_key: str | None,
    params: SamplingParams,
    description: str,
) -> list[ResponseRecord]:
    """`params.n` responses per prompt from the policy with the adapter stored at `adapter_key`."""
    engine = ctx.engines.policy()
    adapter = ctx.fetch_adapter(adapter_key)
    total = len(prompts)
    ctx.progress(0, total, description)
    generations = engine.chat(
        [user(p["text"]) for p in prompts],
        params,
        adapter=str(adapter) if adapter is not None else None,
        progress=lambda done: ctx.progress(done, total, description),
    )
    rows: list[ResponseRecord] = []
    for prompt, gens in zip(prompts, generations, strict=True):
        for i, g in enumerate(gens):
            rows.append(
                ResponseRecord(
                    id=f"{prompt['id']}#{i}",
                    prompt_id=prompt["id"],
                    prompt=prompt["text"],
                    kind=prompt["kind"],
                    category=prompt["category"],
                    source=prompt["source"],
                    sample=i,
                    text=g.text,
                    tokens=g.tokens,
                    adapter=adapter_key,
                )
            )
    return rows


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
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + 1
    return {
        "prompts": len(prompts),
        "responses": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "by_kind": by_kind,
        "adapter": adapter_key,
        "parent": ctx.parent,
        "model": ctx.spec.policy.model,
    }
