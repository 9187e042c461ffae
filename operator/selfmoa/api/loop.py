"""The loop's inputs: the policy, the safety reset, attack and helpfulness prompts and sampling
(how each iteration is measured, and when the loop stops, is in `selfmoa.api.evaluation`)."""

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
    check_public,
)


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
            check_public(self.seeds, ("harmful",))
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
            check_public(self.prompts, ("benign", "legit"))
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
    sentences: Int = Field(
        default=2,
        ge=0,
        le=8,
        description=(
            "Whole sentences of the policy's continuation kept after the prefix; 0 keeps the "
            "prefix alone and samples nothing (a small policy's continuation often turns back "
            "to comply: 'However, I can ...')."
        ),
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
