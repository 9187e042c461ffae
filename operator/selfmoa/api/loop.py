"""The loop's inputs: the policy, the safety reset, attack and helpfulness prompts, sampling,
evaluation and early stopping."""

from __future__ import annotations

from collections import Counter

from pydantic import Field, model_validator

from selfmoa.api.base import (
    DEFAULT_CATEGORIES,
    MAX_NEW_TOKENS,
    TINY_MODEL,
    Bool,
    Float,
    Int,
    Model,
    NonBlank,
    Seed,
)


class ModelRef(Model):
    """Where a model comes from."""

    model: str = Field(
        description=(
            "Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct), s3:// URI, local path, or "
            f"'{TINY_MODEL}' for the built-in tiny CPU profile."
        ),
        min_length=1,
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")


class PolicySpec(ModelRef):
    """The model being aligned."""

    adapter: str | None = Field(
        default=None, description="Optional LoRA adapter (path or URI) to start from."
    )


class SafetyResetSpec(Model):
    """The paper's optional safety reset: LoRA SFT on compliance data, run once before the loop."""

    enabled: Bool = Field(default=False, description="Run the safety reset before iteration 1.")
    steps: Int = Field(
        default=60, ge=1, le=100_000, description="Optimizer steps of the reset SFT."
    )
    learning_rate: Float = Field(default=2e-3, gt=0, le=1, description="Reset SFT learning rate.")
    data: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Compliance examples for the reset: a JSONL file (local path, file:// or s3:// URI) "
            "of {prompt, response} rows. Required unless the policy is the built-in tiny model."
        ),
    )


class RedTeamSpec(Model):
    """Who writes the attack prompts, and how many."""

    model: str | None = Field(
        default=None,
        description=(
            "Red-team model id. Unset: attacks come from the built-in template and mutation "
            "source (role-play, hypothetical, obfuscation framings of seed attacks)."
        ),
    )
    prompts_per_iteration: Int = Field(
        default=256, ge=1, le=1_000_000, description="Attack prompts kept per iteration."
    )
    categories: list[NonBlank] = Field(
        default_factory=lambda: list(DEFAULT_CATEGORIES),
        min_length=1,
        max_length=256,
        description="Harm categories to attack.",
    )
    adaptive: Bool = Field(
        default=True,
        description="Steer toward categories and framings that succeeded in the previous iteration.",
    )
    min_chars: Int = Field(default=12, ge=1, le=100_000, description="Shortest prompt kept.")
    max_chars: Int = Field(default=1200, ge=16, le=100_000, description="Longest prompt kept.")
    near_duplicate_threshold: Float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Jaccard similarity of word 3-grams above which a prompt is a near duplicate.",
    )
    temperature: Float = Field(
        default=1.0, ge=0, le=2, description="Red-team sampling temperature."
    )

    @model_validator(mode="after")
    def _distinct_categories(self) -> RedTeamSpec:
        dup = sorted(c for c, n in Counter(self.categories).items() if n > 1)
        if dup:
            raise ValueError(f"categories: duplicate category {dup}")
        return self


class HelpfulnessSpec(Model):
    """Helpfulness prompts mixed into every iteration (benign and sensitive-but-legitimate)."""

    prompts: str = Field(
        default="builtin",
        min_length=1,
        description="'builtin' (the project's seed sets) or a path/URI of a JSONL file of prompts.",
    )
    fraction: Float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of each iteration's prompts that are helpfulness prompts.",
    )
    legit_share: Float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Of the helpfulness prompts, the share that are sensitive but legitimate.",
    )


class SamplingSpec(Model):
    """How the policy samples responses."""

    responses_per_prompt: Int = Field(default=4, ge=1, le=64, description="Samples per prompt.")
    temperature: Float = Field(default=0.8, ge=0, le=2, description="Sampling temperature.")
    top_p: Float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: Int = Field(
        default=256, ge=1, le=MAX_NEW_TOKENS, description="Tokens per response."
    )
    seed: Seed = Field(
        default=0, description="Base random seed (iteration index is added); 0..2^31-1."
    )


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
            "'builtin' or a path/URI of a JSONL held-out test set: reported, never decided on."
        ),
    )
    validation: str = Field(
        default="builtin",
        min_length=1,
        description=(
            "The prompts the gate decides on (accept, roll back, best, early stop), disjoint "
            "from the held-out set: 'builtin' (the seed data's validation split), a path/URI "
            "of a JSONL file, or 'none' (the gate then decides on the held-out set)."
        ),
    )
    max_prompts: Int | None = Field(
        default=None, ge=1, le=1_000_000, description="Cap on held-out prompts."
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
