"""respond: the current policy (base + the parent iteration's adapter) samples N responses per prompt."""

from __future__ import annotations

from collections import Counter
from typing import Any

from selfmoa.engines.base import Generation, SamplingParams
from selfmoa.run import layout
from selfmoa.run.records import PromptRecord, ResponseRecord
from selfmoa.stages import decline
from selfmoa.stages.base import StageContext, StageOutput
from selfmoa.stages.sampling import adapter_source, response_record, sample_responses


def _self_declines(
    ctx: StageContext, prompts: list[PromptRecord], adapter_key: str | None
) -> list[ResponseRecord]:
    """One decline per prompt, written by the policy itself (`stages.decline`)."""
    s = ctx.spec.sampling
    d = s.self_decline
    if d.sentences == 0:
        # The prefix alone: nothing for the policy to write.
        canned = Generation(d.prefix, 0, "stop")
        return [_guided(p, s.responses_per_prompt, canned, adapter_key) for p in prompts]
    engine = ctx.engines.policy()
    adapter = engine.use_adapter(adapter_source(ctx, adapter_key))
    total = len(prompts)
    ctx.progress(0, total, "self declines")
    gens = engine.chat(
        [decline.conversation(p, s) for p in prompts],
        decline.params(s, s.seed + ctx.iteration + 7919),
        adapter=adapter,
        progress=lambda done: ctx.progress(done, total, "self declines"),
    )
    return [
        _guided(
            p,
            s.responses_per_prompt,
            Generation(decline.text(d.prefix, g, d.sentences), g.tokens, g.finish_reason),
            adapter_key,
        )
        for p, (g, *_) in zip(prompts, gens, strict=True)
    ]


def _guided(
    prompt: PromptRecord, sample: int, written: Generation, adapter_key: str | None
) -> ResponseRecord:
    row = response_record(prompt, sample, written, adapter_key)
    row["guided"] = True
    return row


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
    declines = _self_declines(ctx, prompts, adapter_key) if s.self_decline.enabled else []
    rows += declines
    out.write_jsonl(layout.RESPONSES, rows)
    return {
        "prompts": len(prompts),
        "responses": len(rows),
        "self_declines": len(declines),
        "tokens": sum(r["tokens"] for r in rows),
        "by_kind": dict(Counter(r["kind"] for r in rows)),
        "adapter": adapter_key,
        "parent": ctx.parent,
        "model": ctx.spec.policy.model,
    }
