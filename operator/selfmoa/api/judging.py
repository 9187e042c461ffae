"""Weak supervision: the judges, how their scores are combined, and how pairs are built."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from selfmoa.api.base import DNS1123_LABEL_PATTERN, Bool, Float, Int, Model, Seed


class Objective(StrEnum):
    safety = "safety"
    helpfulness = "helpfulness"


class JudgeKind(StrEnum):
    heuristic = "heuristic"
    llm = "llm"
    classifier = "classifier"
    embedding = "embedding"
    gold = "gold"


class JudgeFormat(StrEnum):
    """The reply format of an llm judge: our rubric, or a guard model's native one."""

    rubric = "rubric"
    llama_guard = "llama-guard"
    shieldgemma = "shieldgemma"
    wildguard = "wildguard"
    qwen3guard = "qwen3guard"
    granite_guardian = "granite-guardian"
    fulfilment = "fulfilment"


class JudgeSpec(Model):
    """One weak judge of one objective."""

    name: str = Field(
        pattern=DNS1123_LABEL_PATTERN, max_length=40, description="Unique judge name."
    )
    objective: Objective = Field(description="What it scores: safety or helpfulness.")
    kind: JudgeKind = Field(
        default=JudgeKind.heuristic,
        description=(
            "heuristic (refusal/harm patterns), llm (rubric prompt to a served model), "
            "classifier (sequence-classification reward model), embedding (a sentence-embedding "
            "model: refusal by similarity to refusals, topic by similarity to the prompt), gold "
            "(the tiny profile's ground truth; only valid with the tiny policy)."
        ),
    )
    model: str | None = Field(
        default=None, description="Model id, required for llm, classifier and embedding."
    )
    weight: Float = Field(default=1.0, gt=0, le=1000, description="Weight in the soft vote.")
    noise: Float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Heuristic judges only: probability of a flipped verdict (simulated weakness).",
    )
    seed: Seed = Field(
        default=0,
        description=(
            "Heuristic judges only: 0 knows every refusal, harm and topic cue; any other seed "
            "picks the share of cues this judge knows (its blind spots) and its noise draws; "
            "0..2^31-1."
        ),
    )
    strict: Bool = Field(
        default=False,
        description=(
            "heuristic judges only: on an attack, any answer that does not decline is unsafe "
            "(1; garbled 2), whatever its words: for real models, whose compliance rarely uses "
            "the cue words of the tiny profile's answers. Off: an undeclined answer without "
            "harm cues is 3 (not declined, nothing harmful)."
        ),
    )
    format: JudgeFormat = Field(
        default=JudgeFormat.rubric,
        description=(
            "llm judges only: how the model answers. rubric (our prompt, 'Score: N/5'), a guard "
            "model's native reply: llama-guard, shieldgemma, wildguard, qwen3guard, "
            "granite-guardian (a reply that doesn't parse is unscored, never guessed), or "
            "fulfilment: the model is asked whether the response does what the request asks and "
            "P(Yes) is read from its next-token log-probabilities (never unparsable: for small "
            "models that can't follow a rubric; both objectives)."
        ),
    )
    min_coverage: Float = Field(
        default=0.9,
        ge=0,
        le=1,
        description=(
            "Fewest share of items this judge must score; below it the stage fails instead of "
            "computing metrics from missing scores."
        ),
    )

    @model_validator(mode="after")
    def _model_required(self) -> JudgeSpec:
        if (
            self.kind in (JudgeKind.llm, JudgeKind.classifier, JudgeKind.embedding)
            and not self.model
        ):
            raise ValueError(f"judge '{self.name}': kind {self.kind.value} needs a model")
        return self


class EnsembleMethod(StrEnum):
    soft = "soft"
    hard = "hard"
    bootstrap = "bootstrap"


class EnsembleSpec(Model):
    """How the judges of one objective are combined."""

    method: EnsembleMethod = Field(
        default=EnsembleMethod.soft,
        description="soft (weighted mean score), hard (majority of thresholded labels), bootstrap.",
    )
    bootstrap_samples: Int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Resamples for bootstrap (0: 200 when method=bootstrap).",
    )
    threshold: Float = Field(
        default=3.0, ge=1, le=5, description="Score at or above which a response counts as good."
    )


class PairStrategy(StrEnum):
    scalarized = "scalarized"
    pareto = "pareto"


class PreferencesSpec(Model):
    """How preference pairs are built from the multi-objective scores."""

    strategy: PairStrategy = Field(default=PairStrategy.scalarized, description="Pair strategy.")
    weights: dict[str, Float] = Field(
        default_factory=lambda: {"safety": 0.6, "helpfulness": 0.4},
        description="Objective weights for the scalarized strategy.",
    )
    min_margin: Float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="Smallest scalarized score difference that makes a pair.",
    )
    max_pairs_per_prompt: Int = Field(default=2, ge=1, le=64, description="Pairs kept per prompt.")
    acceptable_chosen: bool = Field(
        default=False,
        description=(
            "A pair's chosen response must be one the ensemble labels good on every weighted "
            "objective (score >= ensemble.threshold): pairs never train toward a response the "
            "judges call bad, such as garbled text that is only less unsafe than the rejected "
            "answer, or a refusal of a benign request. Off: the better of two responses is "
            "chosen even when both are bad."
        ),
    )

    decline_contrast: Float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Share of the attack-prompt pairs that get a contrast pair on a helpfulness prompt: "
            "chosen = that prompt's best answer (good on every weighted objective), rejected = "
            "the decline the attack pair teaches (its chosen text). Teaches declining this "
            "request, not every request: the contrast against over-refusal. Legit prompts of "
            "the attack's category first, then others; each prompt used once. 0: none."
        ),
    )

    @model_validator(mode="after")
    def _weights(self) -> PreferencesSpec:
        unknown = set(self.weights) - {o.value for o in Objective}
        if unknown:
            raise ValueError(f"weights: unknown objective(s) {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights: must be non-negative with a positive sum")
        return self
