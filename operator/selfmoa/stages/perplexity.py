"""Capability kept, for any policy: perplexity on the reference answers of evaluation prompts.

Prompts that come with a reference answer (public benign-qa: "How do I safely light a
campfire?" and two sentences of a good answer; a file's `reference` field) measure how well the
policy still predicts plain, helpful text: the teacher-forced perplexity of each reference given
its prompt, rendered exactly as the engines render it, over all reference tokens of a split.
An adapter that learned to refuse everything, or to ramble, predicts them worse; `stopWhen.
maxCapabilityDrop` rolls such an adapter back on the validation split's figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from selfmoa.run.metrics import OPENING_TOKENS, Capability
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageContext


def with_references(prompts: Sequence[PromptRecord]) -> list[PromptRecord]:
    return [p for p in prompts if p.get("reference")]


def reference_capability(
    ctx: StageContext, adapter_key: str | None, splits: Mapping[str, Sequence[PromptRecord]]
) -> dict[str, Capability]:
    """Per split: perplexity and next-token accuracy of the policy (base + the adapter at
    `adapter_key`) on its prompts' reference answers; splits without any are left out. One
    model load for every split."""
    todo = {name: with_references(ps) for name, ps in splits.items()}
    todo = {name: ps for name, ps in todo.items() if ps}
    if not todo:
        return {}
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfmoa.models.chat import load_tokenizer
    from selfmoa.models.threads import cpu_threads_for
    from selfmoa.training.model import encode_pair

    base = ctx.engines.model_path(ctx.spec.policy.model)
    tok = load_tokenizer(base)
    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    adapter = ctx.fetch_adapter(adapter_key)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out: dict[str, Capability] = {}
    for name, prompts in todo.items():
        encoded = [encode_pair(tok, p["text"], str(p["reference"]), 1024) for p in prompts]
        label = f"capability ({name})"

        def progress(i: int, n: int, label: str = label) -> None:
            ctx.progress(i, n, label)

        with cpu_threads_for(model):
            got = teacher_forced(
                model, encoded, f"reference answers to {len(prompts)} {name} prompts", progress
            )
        if got is not None:
            out[name] = got
    return out


def teacher_forced(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    source: str,
    progress: Callable[[int, int], None] | None = None,
) -> Capability | None:
    """Perplexity and next-token accuracy of `model` over the labelled tokens of `encoded`
    (input ids, labels with -100 where nothing is scored); None when no token is labelled."""
    import torch

    nll, correct, count = 0.0, 0, 0
    body_nll, body_count = 0.0, 0
    with torch.inference_mode():
        for i, (ids, labels) in enumerate(encoded):
            if progress is not None:
                progress(i, len(encoded))
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels)[1:]
            mask = target != -100
            each = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="none")
            nll += float(each.sum())
            body_nll += float(each[OPENING_TOKENS:].sum())
            body_count += max(0, int(each.numel()) - OPENING_TOKENS)
            correct += int((logits[mask].argmax(-1) == target[mask]).sum())
            count += int(mask.sum())
    if not count:
        return None
    return Capability(
        source=source,
        perplexity=round(math.exp(nll / count), 4),
        body_perplexity=round(math.exp(body_nll / body_count), 4) if body_count else None,
        next_token_accuracy=round(correct / count, 4),
        tokens=count,
    )
