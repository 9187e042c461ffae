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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from selfmoa.api.spec import AlignmentRunSpec, JudgeKind, Objective
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
    pgr,
)
from selfmoa.run.records import JudgmentRecord, PromptRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput
from selfmoa.stages.capability import capabilities
from selfmoa.stages.evaluators import (
    add_evaluator,
    calibration,
    evaluation_judges,
    evaluator_class,
    evaluator_metrics,
)
from selfmoa.stages.sampling import sample_responses
from selfmoa.stages.sources import Split, prompts_of

VALIDATION_JUDGMENTS = "validation-judgments.jsonl"
#: Held-out answers kept as samples: per harm category, and of benign and legit prompts.
SAMPLES_PER_CATEGORY = 1
SAMPLES_PER_HELPFUL_KIND = 2

#: Whose outcome classes the metrics report.
ClassSource = Literal["gold", "evaluator", "judges"]


def _prompts(
    ctx: StageContext, source: str, split: Split, builtin: Callable[[], list[PromptRecord]]
) -> list[PromptRecord]:
    prompts = prompts_of(
        ctx.spec, source, split=split, field=f"evaluation.{split}", builtin=builtin
    )
    ev = ctx.spec.evaluation
    cap = ev.max_prompts
    if split == "validation" and ev.max_validation_prompts is not None:
        cap = ev.max_validation_prompts
    return _stratified(prompts, cap) if cap else prompts


def heldout_prompts(ctx: StageContext) -> list[PromptRecord]:
    from selfmoa.tiny.seeds import heldout

    return _prompts(ctx, ctx.spec.evaluation.heldout, "heldout", heldout)


def validation_prompts(ctx: StageContext) -> list[PromptRecord]:
    """The gate's prompts; none with `evaluation.validation: none`. A file that shares a prompt
    with the held-out set is refused: the gate must not see what the run reports."""
    from selfmoa.tiny.seeds import validation

    source = ctx.spec.evaluation.validation
    if source == "none":
        return []
    return _prompts(ctx, source, "validation", validation)


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
    from selfmoa.judges import oracle

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
    evaluators = evaluation_judges(ctx)
    adapter_key = ctx.adapter_key(k)
    judgments, judge_summary = held_out.judged(adapter_key, "held-out")
    evaluator_summary = add_evaluator(ctx, judgments, evaluators, "held-out")
    threshold = spec.ensemble.threshold
    weak = objective_metrics(judgments, threshold=threshold)
    evaluator = evaluator_metrics(judgments, threshold) if evaluators else None
    use_gold = spec.evaluation.gold_judge
    gold, classes, source = _classes(judgments, evaluators, threshold, use_gold=use_gold)
    outcomes = outcome_shares(judgments, classes, source)
    kept = capabilities(ctx, adapter_key, prompts, validation_prompts(ctx))
    validation = _validation(held_out, out, adapter_key, kept.get("validation"))
    train = ctx.require("train").get("summary", {}) if k >= 1 else {}
    ceiling, gap = None, None
    if k >= 1 and spec.evaluation.ceiling and gold is not None:
        ceiling, gap = ceiling_metrics(held_out, out, gold)
    sampled, chosen = _pairs_outcomes(ctx)
    weak_judges = [j for j in held_out.judges if j.kind != JudgeKind.gold]
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
        evaluator=evaluator,
        calibration=calibration(spec, weak_judges, evaluators) if k == 0 else [],
        **weak.model_copy(update={"capability": kept.get("heldout")}).model_dump(),
    )
    out.write_jsonl(layout.JUDGMENTS, judgments)
    out.write_json(layout.METRICS, metrics.model_dump(mode="json"))
    return _summary(metrics, judges=judge_summary, evaluator_judges=evaluator_summary)


def _classes(
    judgments: list[JudgmentRecord],
    evaluators: Sequence[Judge],
    threshold: float,
    *,
    use_gold: bool,
) -> tuple[ObjectiveMetrics | None, list[str | None], ClassSource]:
    """(gold metrics, each held-out answer's outcome class, whose classes they are): the gold
    judge's when it scored (its metrics too), else the evaluation judges', else the weak
    judges'."""
    if use_gold:
        gold_cls = gold_classes(judgments)
        return gold_metrics(judgments, threshold, gold_cls), list(gold_cls), "gold"
    if evaluators:
        names = [j.name for j in evaluators]
        return None, [evaluator_class(j, names) for j in judgments], "evaluator"
    return None, [weak_outcome(j, threshold) for j in judgments], "judges"


def _summary(
    metrics: Metrics, *, judges: dict[str, Any], evaluator_judges: dict[str, Any]
) -> dict[str, Any]:
    """The stage's summary: the headline figures of `metrics` and the judges' summaries."""
    evaluator, validation, outcomes = metrics.evaluator, metrics.validation, metrics.outcomes
    return {
        "prompts": metrics.prompts,
        "adapter": metrics.adapter,
        "attack_success_rate": metrics.attack_success_rate,
        "helpfulness": metrics.helpfulness,
        "over_refusal": metrics.over_refusal,
        "evaluator_attack_success_rate": None
        if evaluator is None
        else evaluator.attack_success_rate,
        "evaluator_over_refusal": None if evaluator is None else evaluator.over_refusal,
        "validation_attack_success_rate": None
        if validation is None
        else validation.attack_success_rate,
        "declined": None if outcomes is None else outcomes.declined,
        "deflection": None if outcomes is None else outcomes.deflection,
        "perplexity": None if metrics.capability is None else metrics.capability.perplexity,
        "task_score": None if metrics.capability is None else metrics.capability.task_score,
        "judges": judges,
        "evaluator_judges": evaluator_judges,
    }
