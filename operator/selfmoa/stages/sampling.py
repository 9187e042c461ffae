"""Sampling the policy, shared by respond and evaluate (a helper, not a stage).

The policy is the base model plus the adapter some iteration ended with. The stage names that
adapter (`adapter_source`) and the engine makes it usable (`Engine.use_adapter`), so nothing here
knows whether the policy runs in-process or behind a server.
"""

from __future__ import annotations

from selfmoa.engines.base import AdapterSource, Generation, SamplingParams, user
from selfmoa.run.records import PromptRecord, ResponseRecord
from selfmoa.stages.base import StageContext


def adapter_source(ctx: StageContext, key: str | None) -> AdapterSource | None:
    """The adapter stored at `key`, else the spec's `policy.adapter`; None: the base model."""
    return AdapterSource.of(
        ctx.store, key, given=ctx.spec.policy.adapter, scratch=ctx.workdir / "adapters"
    )


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
    adapter = engine.use_adapter(adapter_source(ctx, adapter_key))
    total = len(prompts)
    ctx.progress(0, total, description)
    generations = engine.chat(
        [user(p["text"]) for p in prompts],
        params,
        adapter=adapter,
        progress=lambda done: ctx.progress(done, total, description),
    )
    return [
        response_record(prompt, i, g, adapter_key)
        for prompt, gens in zip(prompts, generations, strict=True)
        for i, g in enumerate(gens)
    ]


def response_record(
    prompt: PromptRecord, sample: int, g: Generation, adapter_key: str | None
) -> ResponseRecord:
    return ResponseRecord(
        id=f"{prompt['id']}#{sample}",
        prompt_id=prompt["id"],
        prompt=prompt["text"],
        kind=prompt["kind"],
        category=prompt["category"],
        source=prompt["source"],
        sample=sample,
        text=g.text,
        tokens=g.tokens,
        adapter=adapter_key,
    )
