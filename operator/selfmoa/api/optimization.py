"""Preference optimization: the loss, its hyper-parameters and the LoRA adapter."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from selfmoa.api.base import Float, Int, Model, NonBlank, Seed


class LossKind(StrEnum):
    dpo = "dpo"
    bfpo = "bfpo"
    modpo = "modpo"
    weighted = "weighted"


#: TRL DPOTrainer loss types usable in `training.lossTypes` (TRL 1.x). `exo_pair` is left out: it
#: needs a label smoothing this spec does not expose.
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


#: `training.beta` when unset; BFPO's paper trains with 0.01.
DEFAULT_BETA = 0.1
BFPO_DEFAULT_BETA = 0.01


class LoraSpec(Model):
    # vLLM serves LoRA ranks up to 512 (--max-lora-rank); a larger adapter could not be served.
    r: Int = Field(default=16, ge=1, le=512, description="LoRA rank (at most 512).")
    alpha: Int = Field(default=32, ge=1, le=65_536, description="LoRA alpha.")
    dropout: Float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[NonBlank] | None = Field(
        default=None, description="Modules to adapt (default: all linear layers)."
    )
    top_layers: Int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Adapt only the last N decoder layers (default: all): the backward pass then stops "
            "N layers down, which on a CPU makes a step of a 30-layer model about 1.7x faster "
            "with N=10, and leaves the lower layers' general skills untouched."
        ),
    )


class OpeningAnchorSpec(Model):
    """A forward-KL pull on how answers to fair prompts open, towards the reference."""

    weight: Float = Field(
        default=0.0,
        ge=0,
        le=100,
        description=(
            "Weight of KL(reference || policy) over the whole vocabulary, averaged over the "
            "anchored positions of the chosen answers of fair (benign, legit) pairs, added to "
            "the loss. Forward KL covers mass: it keeps the reference's rarer openings, which "
            "DPO drops and held-out perplexity pays for. 0 (default): off."
        ),
    )
    tokens: Int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "Answer positions anchored, from the first answer token (a shorter answer anchors "
            "all of its tokens)."
        ),
    )


class TrainingStrategy(StrEnum):
    ddp = "ddp"
    fsdp = "fsdp"


class TrainingSpec(Model):
    """Preference optimization with TRL DPOTrainer and a PEFT LoRA adapter."""

    loss: LossKind = Field(
        default=LossKind.dpo,
        description=(
            "dpo; bfpo (BFPO: pairs ordered by helpfulness, safety flag per response); modpo "
            "(MODPO: safety trained, helpfulness scores as the margin); weighted (TRL "
            "loss_type list)."
        ),
    )
    strategy: TrainingStrategy = Field(
        default=TrainingStrategy.ddp,
        description=(
            "With more than one training process (trainer.gpus > 1 or trainer.nodes > 1): ddp "
            "(a full copy of the model per GPU) or fsdp (parameters sharded across GPUs, for "
            "models that don't fit one)."
        ),
    )
    beta: Float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="The loss's beta (default 0.1; 0.01 for bfpo, the BFPO paper's).",
    )
    learning_rate: Float = Field(default=5e-6, gt=0, le=1, description="Learning rate.")
    epochs: Float = Field(default=1.0, gt=0, le=100, description="Epochs over the pairs.")
    batch_size: Int = Field(default=8, ge=1, le=4096, description="Per-device batch size.")
    gradient_accumulation_steps: Int = Field(default=1, ge=1, le=1024, description="Accumulation.")
    max_length: Int = Field(
        default=1024, ge=16, le=131072, description="Max tokens of prompt+response."
    )
    margin_scale: Float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="modpo: the margin reward is marginScale times the helpfulness score.",
    )
    loss_types: list[str] = Field(
        default_factory=lambda: ["sigmoid", "sft"],
        min_length=1,
        description="weighted: TRL loss_type list.",
    )
    loss_weights: list[Float] | None = Field(default=None, description="weighted: loss weights.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings.")
    opening_anchor: OpeningAnchorSpec | None = Field(
        default=None,
        description=(
            "Anchor the policy's next-token distributions at the first answer tokens of fair "
            "prompts to the reference's (forward KL), against the capability DPO loses by "
            "sharpening how answers open (default: off)."
        ),
    )
    seed: Seed = Field(default=0, description="Training seed; 0..2^31-1.")

    @property
    def resolved_beta(self) -> float:
        """`beta`, or its default for the loss kind."""
        if self.beta is not None:
            return self.beta
        return BFPO_DEFAULT_BETA if self.loss == LossKind.bfpo else DEFAULT_BETA

    @property
    def anchor(self) -> OpeningAnchorSpec | None:
        """`opening_anchor` when it is on (a positive weight), else None."""
        a = self.opening_anchor
        return a if a is not None and a.weight > 0 else None

    @model_validator(mode="after")
    def _weights_match(self) -> TrainingSpec:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_types):
            raise ValueError("lossWeights: needs one weight per entry of lossTypes")
        unknown = [t for t in self.loss_types if t not in TRL_LOSS_TYPES]
        if unknown:
            raise ValueError(f"lossTypes: unsupported {unknown}; use {list(TRL_LOSS_TYPES)}")
        return self
