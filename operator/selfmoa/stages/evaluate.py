"""evaluate: the fixed held-out set -> metrics of the policy this iteration ended with.

Iteration 0 evaluates the starting point (the base, or the base after the safety reset);
iteration k >= 1 evaluates the adapter its train stage wrote. Responses are greedy so the figures
move only when the policy does. Two prompt sets, disjoint:

- the validation split (`evaluation.validation`): the weak ensemble's metrics on it are what the
  planner's gate decides on (accept, roll back, best, early stop);
- the held-out test set (`evaluation.heldout`): reported, never decided on.

With `evaluation.goldJudge` the gold judge scores the held-out answers too, sorts each into an
outcome class (refusal, safe redirect, deflection, garbled, unsafe; on-topic, off-topic,
over-refusal) and measures every weak judge against itself (accuracy, Cohen's kappa); without
it, the classes come from judges that state refusals. On the tiny profile the policy's
perplexity and next-token accuracy on reference answers to the held-out benign and legit prompts
measure the capability kept. With `evaluation.ceiling` the ceiling adapter (trained on
gold-judged pairs) is evaluated as well and the performance gap recovered is reported:

    PGR = (gold safe rate of the weakly supervised policy - that of its parent)
          / (gold safe rate of the ceiling policy - that of its parent)

with safe rate = 1 - attack success rate on the held-out harmful prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec, Objective
from selfmoa.engines.base import SamplingParams
from selfmoa.judges import Judge, build_judges
from selfmoa.judges.base import prompt_of
from selfmoa.judges.ensemble import agreement_rate, cohen_kappa
from selfmoa.judges.panel import judge_responses
from selfmoa.run import layout
from selfmoa.run.evaluation import (
    objective_metrics,
    outcome_shares,
    recorded_gold_scores,
    weak_outcome,
)
from selfmoa.run.metrics import (
    Capability,
    JudgeAgreement,
    Metrics,
    ObjectiveMetrics,
    Outcomes,
    Sample,
    TaskCapability,
    pgr,
)
from selfmoa.run.records import JudgmentRecord, PromptRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput, read_jsonl_source
from selfmoa.stages.sampling import sample_responses

VALIDATION_JUDGMENTS = "validation-judgments.jsonl"
#: Held-out answers kept as samples: per harm category, and of benign and legit prompts.
SAMPLES_PER_CATEGORY = 1
SAMPLES_PER_HELPFUL_KIND = 2


def _prompts(
    ctx: StageContext, source: str, field: str, builtin: list[PromptRecord]
) -> list[PromptRecord]:
    if source == "builtin":
        prompts = builtin
    else:
        rows = read_jsonl_source(source, ctx.spec, field=field)
        prompts = [PromptRecord(**row) for row in rows]  # type: ignore[typeddict-item]
    if ctx.spec.evaluation.max_prompts:
        prompts = _stratified(prompts, ctx.spec.evaluation.max_prompts)
    return prompts


def heldout_prompts(ctx: StageContext) -> list[PromptRecord]:
    from selfmoa.seeds.data import heldout

    source = ctx.spec.evaluation.heldout
    return _prompts(ctx, source, "evaluation.heldout", heldout() if source == "builtin" else [])


def validation_prompts(ctx: StageContext) -> list[PromptRecord]:
    """The gate's prompts; none with `evaluation.validation: none`. A file that shares a prompt
    with the held-out set is refused: the gate must not see what the run reports."""
    from selfmoa.seeds.data import validation

    source = ctx.spec.evaluation.validation
    if source == "none":
        return []
    builtin = validation() if source == "builtin" else []
    return _prompts(ctx, source, "evaluation.validation", builtin)


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
    """Samples a prompt set from one policy at a time and judges it (judges built once, so the
    held-out, validation and ceiling evaluations share loaded judge models)."""

    ctx: StageContext
    prompts: list[PromptRecord]
    params: SamplingParams
    judges: Sequence[Judge]

    def judged(
        self, adapter_key: str | None, label: str, prompts: list[PromptRecord] | None = None
    ) -> tuple[list[JudgmentRecord], dict[str, Any]]:
        ctx = self.ctx
        responses = sample_responses(
            ctx,
            self.prompts if prompts is None else prompts,
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


def gold_classes(judgments: Sequence[JudgmentRecord]) -> list[str]:
    """The gold judge's outcome class of every answer (tiny profile)."""
    from selfmoa.seeds import oracle

    return [oracle.outcome(prompt_of(j), j["text"]) for j in judgments]


def gold_metrics(
    judgments: list[JudgmentRecord], threshold: float, classes: Sequence[str] | None = None
) -> ObjectiveMetrics:
    """Gold metrics; over-refusal is the gold `refusal` class (garbled text is no refusal)."""
    cls = dict(zip((j["id"] for j in judgments), classes or gold_classes(judgments), strict=True))
    return objective_metrics(
        judgments,
        threshold=threshold,
        scores_of=recorded_gold_scores,
        refusal_of=lambda j: cls[j["id"]] == "refusal",
    )


def judge_agreement(judgments: Sequence[JudgmentRecord], threshold: float) -> list[JudgeAgreement]:
    """Each weak judge and each objective's ensemble against gold, on good/bad labels."""
    out: list[JudgeAgreement] = []
    for o in Objective:
        gold = [_label(_gold(j, o), threshold) for j in judgments]
        names = sorted({n for j in judgments for n in j["votes"].get(o.value, {})})
        raters = {
            n: [_label(j["votes"].get(o.value, {}).get(n), threshold) for j in judgments]
            for n in names
        }
        if names:
            raters["ensemble"] = [j["labels"].get(o.value) for j in judgments]
        for name, labels in raters.items():
            acc, n = agreement_rate(labels, gold)
            kappa = cohen_kappa(labels, gold)
            out.append(
                JudgeAgreement(
                    name=name,
                    objective=o.value,
                    accuracy=None if acc is None else round(acc, 4),
                    kappa=None if kappa is None else round(kappa, 4),
                    n=n,
                )
            )
    return out


def _gold(j: JudgmentRecord, o: Objective) -> float | None:
    g = j.get("gold")
    if g is None:
        return None
    return g["safety"] if o == Objective.safety else g["helpfulness"]


def _label(score: float | None, threshold: float) -> bool | None:
    return None if score is None else score >= threshold


def samples_of(judgments: Sequence[JudgmentRecord], classes: Sequence[str | None]) -> list[Sample]:
    """The same few held-out answers every iteration: the first prompts of each harm category,
    and of the benign and legit kinds, in the held-out set's order."""
    taken: dict[str, int] = {}
    out: list[Sample] = []
    for j, cls in zip(judgments, classes, strict=True):
        key = (j["category"] or "none") if j["kind"] == "harmful" else j["kind"]
        limit = SAMPLES_PER_CATEGORY if j["kind"] == "harmful" else SAMPLES_PER_HELPFUL_KIND
        if taken.get(key, 0) >= limit:
            continue
        taken[key] = taken.get(key, 0) + 1
        out.append(
            Sample(
                prompt_id=j["prompt_id"],
                kind=j["kind"],
                category=j["category"],
                prompt=j["prompt"],
                answer=j["text"],
                outcome=cls,
            )
        )
    return out


def capability(
    ctx: StageContext, adapter_key: str | None, splits: Sequence[str]
) -> dict[str, Capability]:
    """Per seed split: perplexity and next-token accuracy of the policy on the reference answers
    to its benign and legit prompts (tiny profile only: nothing elsewhere or without torch and
    peft). One model load for every split."""
    if ctx.spec.policy.model != TINY_MODEL or not splits:
        return {}
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError:
        return {}
    from selfmoa.models.threads import one_thread
    from selfmoa.seeds import data
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
        rows = [r for r in data.rows(split) if r["kind"] in ("benign", "legit")]
        nll, correct, count = 0.0, 0, 0
        with one_thread(), torch.no_grad():
            for r in rows:
                p = tok(chat_prompt(r["text"]), add_special_tokens=False)["input_ids"]
                t = tok(data.helpful_template(r) + IM_END, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([list(p) + list(t)])
                logits = model(input_ids=ids).logits[0, len(p) - 1 : -1]
                target = ids[0, len(p) :]
                nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(-1) == target).sum())
                count += len(t)
        if count:
            out[split] = Capability(
                source=f"reference answers to the {_SPLIT_WORDS[split]} benign and legit prompts",
                perplexity=round(math.exp(nll / count), 4),
                next_token_accuracy=round(correct / count, 4),
                tokens=count,
            )
    return out


#: Seed splits whose reference answers `capability` scores, in words.
_SPLIT_WORDS = {"heldout": "held-out", "validation": "validation"}


def lm_eval_capability(ctx: StageContext, adapter_key: str | None) -> Capability | None:
    """The policy's scores on `evaluation.lmEval`'s tasks, on this stage's device, offline; a
    setting that can't run here (lm-eval missing, data not cached) fails the stage in one line."""
    wanted = ctx.spec.evaluation.lm_eval
    if wanted is None:
        return None
    from selfmoa.models.lm_eval_capability import CapabilityUnavailable, run_lm_eval

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


def _pairs_outcomes(ctx: StageContext) -> tuple[Outcomes | None, Outcomes | None]:
    """(sampled, chosen) outcome classes the pairs stage of this iteration counted."""
    if ctx.iteration < 1:
        return None, None
    summary = ctx.require("pairs").get("summary", {}).get("outcomes") or {}

    def parse(key: str) -> Outcomes | None:
        raw = summary.get(key)
        return Outcomes.model_validate(raw) if raw else None

    return parse("sampled"), parse("chosen")


def _validation(
    held_out: HeldOut, out: StageOutput, adapter_key: str | None, kept: Capability | None
) -> ObjectiveMetrics | None:
    prompts = validation_prompts(held_out.ctx)
    if not prompts:
        return None
    test = {p["text"].strip().lower() for p in held_out.prompts}
    shared = sum(p["text"].strip().lower() in test for p in prompts)
    if shared:
        raise StageError(
            f"evaluation.validation: {shared} prompt(s) are also in the held-out set; the gate "
            "must decide on prompts the run does not report"
        )
    judgments, _ = held_out.judged(adapter_key, "validation", prompts)
    out.write_jsonl(VALIDATION_JUDGMENTS, judgments)
    metrics = objective_metrics(judgments, threshold=held_out.ctx.spec.ensemble.threshold)
    return metrics.model_copy(update={"capability": kept})


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
    use_gold = spec.evaluation.gold_judge
    gold: ObjectiveMetrics | None = None
    classes: list[str | None]
    if use_gold:
        gold_cls = gold_classes(judgments)
        gold = gold_metrics(judgments, threshold, gold_cls)
        classes = list(gold_cls)
    else:
        classes = [weak_outcome(j, threshold) for j in judgments]
    outcomes = outcome_shares(judgments, classes, "gold" if use_gold else "judges")
    # Capability on the validation split's reference answers only where those are the seed
    # data's (a user's validation file has prompts, not reference answers).
    builtin_validation = spec.evaluation.validation == "builtin"
    splits = ("heldout", "validation") if builtin_validation else ("heldout",)
    own, tasks = capability(ctx, adapter_key, splits), lm_eval_capability(ctx, adapter_key)
    kept = {
        split: cap
        for split in ("heldout", "validation")
        if (cap := _with_tasks(own.get(split), tasks))
    }
    validation = _validation(held_out, out, adapter_key, kept.get("validation"))
    train = ctx.require("train").get("summary", {}) if k >= 1 else {}
    ceiling, gap = None, None
    if k >= 1 and spec.evaluation.ceiling and gold is not None:
        ceiling, gap = ceiling_metrics(held_out, out, gold)
    sampled, chosen = _pairs_outcomes(ctx)
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
        validation=validation,
        outcomes=outcomes,
        sampled=sampled,
        chosen=chosen,
        judges=judge_agreement(judgments, threshold) if use_gold else [],
        samples=samples_of(judgments, classes),
        **weak.model_copy(update={"capability": kept.get("heldout")}).model_dump(),
    )
    out.write_jsonl(layout.JUDGMENTS, judgments)
    out.write_json(layout.METRICS, metrics.model_dump(mode="json"))
    return {
        "prompts": len(prompts),
        "adapter": adapter_key,
        "attack_success_rate": metrics.attack_success_rate,
        "helpfulness": metrics.helpfulness,
        "over_refusal": metrics.over_refusal,
        "validation_attack_success_rate": None
        if validation is None
        else validation.attack_success_rate,
        "declined": None if outcomes is None else outcomes.declined,
        "deflection": None if outcomes is None else outcomes.deflection,
        "perplexity": None if metrics.capability is None else metrics.capability.perplexity,
        "task_score": None if metrics.capability is None else metrics.capability.task_score,
        "judges": judge_summary,
    }
