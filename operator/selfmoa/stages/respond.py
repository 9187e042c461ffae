"""respond: the current policy (base + the parent iteration's adapter) samples N responses per prompt."""

from __future__ import annotations

import hashlib
from typing import Any

from selfmoa import layout
from selfmoa.engines.base import Engine, SamplingParams, user
from selfmoa.engines.openai_engine import OpenAIEngine
from selfmoa.records import PromptRecord, ResponseRecord
from selfmoa.stages.base import StageContext, StageOutput


def served_adapter(ctx: StageContext, engine: Engine, adapter_key: str | None) -> str | None:
    """What to pass as `adapter=`: a local directory for in-process engines; for a server
    (vLLM), the name under which the adapter was hot-loaded into the warm policy server.

    The server reads the adapter itself: from the same path when the store is a shared
    `file://` volume, else from the store URI (vLLM needs an S3 LoRA resolver for `s3://`).
    """
    if adapter_key is None and ctx.spec.policy.adapter is None:
        return None
    if isinstance(engine, OpenAIEngine):
        if adapter_key is None:
            source = str(ctx.spec.policy.adapter)
        else:
            local = ctx.store.local_path(adapter_key)
            source = str(local) if local is not None else f"{ctx.store.uri}/{adapter_key}"
        digest = hashlib.sha256(source.encode()).hexdigest()[:10]
        name = f"selfmoa-{digest}"
        engine.load_adapter(name, source)
        return name
    local_dir = ctx.fetch_adapter(adapter_key)
    return str(local_dir) if local_dir is not None else None


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
    adapter = served_adapter(ctx, engine, adapter_key)
    total = len(prompts)
    ctx.progress(0, total, description)
    generations = engine.chat(
        [user(p["text"]) for p in prompts],
        params,
        adapter=adapter,
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
