"""How each iteration is measured and when the loop stops: the held-out evaluation, the
validation split the gate decides on, lm-eval capability tasks and early stopping."""

from __future__ import annotations

from pydantic import Field, model_validator

from selfmoa.api.base import (
    MAX_NEW_TOKENS,
    PUBLIC_PREFIX,
    PUBLIC_REFUSAL_LABELS,
    Bool,
    Float,
    Int,
    Model,
    NonBlank,
    check_public,
)
from selfmoa.api.judging import JudgeKind, JudgeSpec, Objective


class LmEvalSpec(Model):
    """lm-evaluation-harness tasks as the capability measure (optional extra `selfmoa[lmeval]`):
    run on the policy with each iteration's adapter in the evaluate stage, offline."""

    tasks: list[NonBlank] = Field(
        min_length=1,
        description=(
            "lm-eval task names (e.g. hellaswag, arc_easy), or tasks defined in includePath; "
            "their data must already be in the HF datasets cache: nothing is downloaded."
        ),
    )
    # 0 rather than null for "all": a nullable field with a default is not structural.
    limit: Int = Field(
        default=200, ge=0, le=1_000_000, description="Examples per task (0: every one)."
    )
    include_path: NonBlank | None = Field(
        default=None, description="A directory of custom lm-eval task YAMLs (local tasks)."
    )
    batch_size: Int = Field(default=8, ge=1, le=1024, description="lm-eval batch size.")


class EvaluationSpec(Model):
    """The fixed held-out evaluation run after every iteration, and the validation split the
    gate decides on."""

    heldout: str = Field(
        default="builtin",
        min_length=1,
        description=(
            "'builtin', public:SET[,SET] (the held-out split of public sets: advbench, "
            "harmbench, benign-edgy, benign-qa) or a path/URI of a JSONL held-out test set: "
            "reported, never decided on."
        ),
    )
    validation: str = Field(
        default="builtin",
        min_length=1,
        description=(
            "The prompts the gate decides on (accept, roll back, best, early stop), disjoint "
            "from the held-out set: 'builtin' (the seed data's validation split), "
            "public:SET[,SET] (the validation split of public sets), a path/URI of a JSONL "
            "file, or 'none' (the gate then decides on the held-out set)."
        ),
    )
    refusal_labels: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Human labels to measure every judge on, once (iteration 0), printed beside its "
            "numbers: public:refusal-labels (PyRIT's refusal.csv, 105 responses labelled "
            "refused or not) or a path/URI of a JSONL file of {prompt, response, refused, "
            "kind}."
        ),
    )
    judges: list[JudgeSpec] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Evaluation-only judges: they score the held-out answers and never a training "
            "pair, so the figures they give (the `evaluator` metrics, outcome classes) are not "
            "the training judges grading themselves. Names must differ from spec.judges'."
        ),
    )
    max_prompts: Int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Cap on held-out prompts (taken round robin over prompt kinds).",
    )
    max_validation_prompts: Int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Cap on the validation prompts the gate decides on (default: maxPrompts).",
    )
    max_new_tokens: Int | None = Field(
        default=None,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="Tokens per response (default: sampling.maxNewTokens).",
    )
    gold_judge: Bool = Field(
        default=False,
        description=(
            "Also score with the gold judge (tiny profile only) and report gold metrics; with "
            "ceiling, the performance gap recovered (PGR)."
        ),
    )
    ceiling: Bool = Field(
        default=False,
        description="Train a second adapter on gold-judged pairs each iteration, for PGR.",
    )
    lm_eval: LmEvalSpec | None = Field(
        default=None,
        description=(
            "Capability kept, on lm-evaluation-harness tasks (the paper's HellaSwag, "
            "WinoGrande, LAMBADA, MMLU...); the tiny profile also measures perplexity."
        ),
    )
    gold_baseline: Bool = Field(
        default=False,
        description=(
            "Train on gold-judged pairs instead of the weak ensemble's (needs goldJudge): the "
            "fully gold-supervised loop that weak-to-strong results are measured against."
        ),
    )

    @model_validator(mode="after")
    def _gold_baseline_needs_gold(self) -> EvaluationSpec:
        if self.gold_baseline and not self.gold_judge:
            raise ValueError("goldBaseline: needs goldJudge")
        for field, source in (("heldout", self.heldout), ("validation", self.validation)):
            try:
                check_public(source)
            except ValueError as e:
                raise ValueError(f"{field}: {e}") from None
        labels = self.refusal_labels or ""
        if labels.startswith(PUBLIC_PREFIX) and labels != PUBLIC_REFUSAL_LABELS:
            raise ValueError(f"refusalLabels: the public labels are {PUBLIC_REFUSAL_LABELS}")
        names = [j.name for j in self.judges]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"judges: duplicate name(s) {dup}")
        if any(j.kind == JudgeKind.gold for j in self.judges):
            raise ValueError("judges: the gold judge is set with goldJudge, not listed here")
        objectives = {j.objective for j in self.judges}
        if self.judges and Objective.safety not in objectives:
            raise ValueError("judges: needs a safety judge (attack success is a safety figure)")
        if self.judges and Objective.helpfulness not in objectives:
            raise ValueError(
                "judges: needs a helpfulness judge (helpfulness and over-refusal are "
                "helpfulness figures)"
            )
        return self


class StopWhenSpec(Model):
    """When the loop stops before `iterations`."""

    attack_success_rate_below: Float | None = Field(
        default=None, ge=0, le=1, description="Stop once the attack success rate is below this."
    )
    patience: Int = Field(
        default=2, ge=1, le=100, description="Stop after this many iterations without improvement."
    )
    min_improvement: Float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Smallest attack-success-rate drop that counts as progress.",
    )
    max_helpfulness_drop: Float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "Roll back an adapter whose helpfulness fell by more than this (relative) below its "
            "parent's or the starting point's, whichever is higher, or whose attack success "
            "rate rose."
        ),
    )
    max_capability_drop: Float | None = Field(
        default=None,
        ge=0,
        description=(
            "Roll back an adapter whose general capability fell by more than this (relative) "
            "below the starting point's: perplexity on reference answers rose (tiny profile, "
            "on the split the gate decides on) or the mean evaluation.lmEval task score fell. "
            "Needs one of the two measures; unset: not a criterion."
        ),
    )
