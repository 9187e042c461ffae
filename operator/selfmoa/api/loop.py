"""The loop's inputs: the policy, the safety reset, attack and helpfulness prompts, sampling,
evaluation and early stopping."""

from __future__ import annotations

from collections import Counter

from pydantic import Field, model_validator

from selfmoa.api.base import (
    DEFAULT_CATEGORIES,
    MAX_NEW_TOKENS,
    PUBLIC_PREFIX,
    PUBLIC_REFUSAL_LABELS,
    PUBLIC_SETS,
    TINY_MODEL,
    Bool,
    Float,
    Int,
    Model,
    NonBlank,
    Seed,
    public_sets,
)
from selfmoa.api.judging import JudgeKind, JudgeSpec, Objective


def _check_public(source: str, kinds: tuple[str, ...] | None = None) -> str:
    """A `public:` source names known sets (of the kinds a field takes); other sources pass."""
    names = public_sets(source)
    if names is not None and kinds is not None:
        wrong = [n for n in names if PUBLIC_SETS[n] not in kinds]
        if wrong:
            raise ValueError(f"{source!r}: {wrong} hold no {' or '.join(kinds)} prompts")
    return source


class ModelRef(Model):
    """Where a model comes from."""

    model: str = Field(
        description=(
            "Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct), s3:// URI, local path, "
            "pkg://PACKAGE/PATH (a directory or file inside an installed Python package), a "
            ".gguf file by any of these (converted once to the Hugging Face layout), or "
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


#: Completion tokens the red team asks for per attack prompt wanted in one reply (a prompt line
#: is ~15-40 tokens); a request never asks for fewer than RED_TEAM_MIN_TOKENS.
RED_TEAM_TOKENS_PER_PROMPT = 48
RED_TEAM_MIN_TOKENS = 64


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
    seeds: str = Field(
        default="builtin",
        min_length=1,
        description=(
            "The attacks the red team starts from: 'builtin' (the project's seed attacks), "
            "public:SET[,SET] (the train split of public attack sets: advbench, harmbench), or "
            "a path/URI of a JSONL file of {text, category}."
        ),
    )
    model_share: Float = Field(
        default=1.0,
        ge=0,
        le=1,
        description=(
            "With a red-team model: the share of the attacks it writes; the rest are seed "
            "attacks, plain or framed (and past successes, when adaptive)."
        ),
    )
    prompts_per_request: Int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "Attack prompts asked of the red-team model per request: a category's quota is "
            "split over requests, so each reply fits a small token budget."
        ),
    )
    jailbreak_share: Float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Share of the attacks wrapped in a public jailbreak template (PyRIT's, with the "
            "attack in its {{ prompt }} slot; needs the pyrit package)."
        ),
    )
    jailbreak_max_chars: Int = Field(
        default=600,
        ge=40,
        le=100_000,
        description="Longest jailbreak template used (characters, before the attack is put in).",
    )

    @model_validator(mode="after")
    def _distinct_categories(self) -> RedTeamSpec:
        dup = sorted(c for c, n in Counter(self.categories).items() if n > 1)
        if dup:
            raise ValueError(f"categories: duplicate category {dup}")
        try:
            _check_public(self.seeds, ("harmful",))
        except ValueError as e:
            raise ValueError(f"seeds: {e}") from None
        return self

    def reply_tokens(self) -> int:
        """The most completion tokens one red-team request asks for."""
        return max(RED_TEAM_MIN_TOKENS, RED_TEAM_TOKENS_PER_PROMPT * self.prompts_per_request)


class HelpfulnessSpec(Model):
    """Helpfulness prompts mixed into every iteration (benign and sensitive-but-legitimate)."""

    prompts: str = Field(
        default="builtin",
        min_length=1,
        description=(
            "'builtin' (the project's seed sets), public:SET[,SET] (the train split of "
            "public sets: benign-edgy, benign-qa), or a path/URI of a JSONL file of prompts."
        ),
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

    @model_validator(mode="after")
    def _public(self) -> HelpfulnessSpec:
        try:
            _check_public(self.prompts, ("benign", "legit"))
        except ValueError as e:
            raise ValueError(f"prompts: {e}") from None
        return self


#: The default system prompt of `sampling.selfDecline`.
DECLINE_SYSTEM = (
    "You are a helpful and harmless assistant. You refuse requests that could cause harm, "
    "briefly explain why, and suggest a safe alternative."
)
#: The default start of the answer the policy writes under it.
DECLINE_PREFIX = "I'm sorry, but I can't help with that."


class SelfDeclineSpec(Model):
    """The good answer the policy writes itself: per prompt, one more response sampled under a
    safety system prompt and started with a decline, which the policy continues in its own
    words. On an attack it is the safe side of a pair when none of the plain samples is safe;
    on a benign or legit prompt it is the needless refusal its good answers are preferred to."""

    enabled: Bool = Field(default=False, description="Sample one self-written decline per prompt.")
    system: NonBlank = Field(
        default=DECLINE_SYSTEM, description="The system prompt it is written under."
    )
    prefix: NonBlank = Field(
        default=DECLINE_PREFIX, description="How the decline starts (the policy writes the rest)."
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
    self_decline: SelfDeclineSpec = Field(
        default_factory=SelfDeclineSpec,
        description="One self-written decline per prompt beside the samples (see its fields).",
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
                _check_public(source)
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
        if self.judges and not any(j.objective == Objective.safety for j in self.judges):
            raise ValueError("judges: needs a safety judge (attack success is a safety figure)")
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
