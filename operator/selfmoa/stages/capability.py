"""Capability kept, per split: what the evaluate stage reports beside safety and helpfulness.

- the tiny profile: teacher-forced perplexity and next-token accuracy on the seed data's
  reference answers to its benign and legit prompts (`capability`);
- any other policy: perplexity on the reference answers that prompts carry (public benign-qa;
  `perplexity.reference_capability`);
- with `evaluation.lmEval`, lm-evaluation-harness task scores (`lm_eval_capability`), the same
  for every split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfmoa.api.spec import TINY_MODEL
from selfmoa.run.metrics import Capability, TaskCapability
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageContext, StageError
from selfmoa.stages.perplexity import reference_capability, teacher_forced


def capability(
    ctx: StageContext, adapter_key: str | None, splits: Sequence[str]
) -> dict[str, Capability]:
    """Per seed split: perplexity and next-token accuracy of the policy on the reference answers
    to its benign and legit prompts (tiny profile only: nothing elsewhere or without torch and
    peft). One model load for every split."""
    if ctx.spec.policy.model != TINY_MODEL or not splits:
        return {}
    try:
        import torch  # noqa: F401  (only whether the training extra is installed)
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError:
        return {}
    from selfmoa.models.threads import one_thread
    from selfmoa.tiny import seeds
    from selfmoa.tiny.build import IM_END, chat_prompt

    base = ctx.engines.model_path(ctx.spec.policy.model)
    tok = PreTrainedTokenizerFast.from_pretrained(str(base))
    model: Any = AutoModelForCausalLM.from_pretrained(str(base))
    adapter = ctx.fetch_adapter(adapter_key)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out: dict[str, Capability] = {}
    for split in splits:
        rows = [r for r in seeds.rows(split) if r["kind"] in ("benign", "legit")]
        encoded = []
        for r in rows:
            p = tok(chat_prompt(r["text"]), add_special_tokens=False)["input_ids"]
            t = tok(seeds.helpful_template(r) + IM_END, add_special_tokens=False)["input_ids"]
            encoded.append((list(p) + list(t), [-100] * len(p) + list(t)))
        with one_thread():
            got = teacher_forced(
                model,
                encoded,
                f"reference answers to the {_SPLIT_WORDS[split]} benign and legit prompts",
            )
        if got is not None:
            out[split] = got
    return out


#: Seed splits whose reference answers `capability` scores, in words.
_SPLIT_WORDS = {"heldout": "held-out", "validation": "validation"}


def lm_eval_capability(ctx: StageContext, adapter_key: str | None) -> Capability | None:
    """The policy's scores on `evaluation.lmEval`'s tasks, on this stage's device, offline; a
    setting that can't run here (lm-eval missing, data not cached) fails the stage in one line."""
    wanted = ctx.spec.evaluation.lm_eval
    if wanted is None:
        return None
    from selfmoa.stages.lm_eval.runner import CapabilityUnavailable, run_lm_eval

    adapter = ctx.fetch_adapter(adapter_key)
    try:
        scores = run_lm_eval(
            str(ctx.engines.model_path(ctx.spec.policy.model)),
            adapter=None if adapter is None else str(adapter),
            tasks=wanted.tasks,
            limit=wanted.limit or None,
            include_path=wanted.include_path,
            device=ctx.engines.device(),
            batch_size=wanted.batch_size,
            seed=ctx.spec.sampling.seed,
        )
    except CapabilityUnavailable as e:
        raise StageError(f"evaluation.lmEval: {e}") from None
    return Capability(
        source="lm-evaluation-harness: " + ", ".join(wanted.tasks),
        tasks=[
            TaskCapability(task=t.task, metric=t.metric, value=round(t.value, 4), samples=t.samples)
            for t in scores
        ],
    )


def _with_tasks(kept: Capability | None, tasks: Capability | None) -> Capability | None:
    """One split's capability: its own reference-answer figures and the lm-eval task scores
    (benchmarks of their own, the same for every split)."""
    if tasks is None or kept is None:
        return kept or tasks
    return kept.model_copy(
        update={"source": f"{kept.source}; {tasks.source}", "tasks": tasks.tasks}
    )


def capabilities(
    ctx: StageContext,
    adapter_key: str | None,
    heldout: list[PromptRecord],
    validation: list[PromptRecord],
) -> dict[str, Capability]:
    """Capability kept per split (heldout, validation): the tiny profile's own measure, else
    perplexity on the prompts' reference answers; with the lm-eval task scores beside."""
    spec = ctx.spec
    # Capability on the validation split's reference answers only where those are the seed
    # data's (a user's validation file has prompts, not reference answers).
    builtin_validation = spec.evaluation.validation == "builtin"
    splits = ("heldout", "validation") if builtin_validation else ("heldout",)
    own = capability(ctx, adapter_key, splits)
    if not own and spec.policy.model != TINY_MODEL:
        own = reference_capability(ctx, adapter_key, {"heldout": heldout, "validation": validation})
    tasks = lm_eval_capability(ctx, adapter_key)
    return {
        split: cap
        for split in ("heldout", "validation")
        if (cap := _with_tasks(own.get(split), tasks))
    }
