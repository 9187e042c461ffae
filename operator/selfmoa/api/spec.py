"""The AlignmentRun resource as typed models: the single source of the CRD schema.

Every field has a default and a description, so the same model validates a `selfmoa run FILE`
input on a laptop and the object a user applies to a cluster; `selfmoa crd` turns it into the
CustomResourceDefinition. Field names are camelCase on the wire (Kubernetes convention) and
snake_case in Python.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "selfmoa.dev"
VERSION = "v1alpha1"
KIND = "AlignmentRun"
PLURAL = "alignmentruns"
SINGULAR = "alignmentrun"
SHORT_NAMES = ["arun"]
API_VERSION = f"{GROUP}/{VERSION}"

#: The model id that selects the built-in tiny profile (no hub download anywhere).
TINY_MODEL = "selfmoa/tiny"

DEFAULT_CATEGORIES = [
    "violence",
    "weapons",
    "self_harm",
    "cybercrime",
    "fraud",
    "drugs",
]


class Model(BaseModel):
    """Base for every spec model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML / the Kubernetes API (camelCase, no Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


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

    enabled: bool = Field(default=False, description="Run the safety reset before iteration 1.")
    steps: int = Field(
        default=60, ge=1, le=100_000, description="Optimizer steps of the reset SFT."
    )
    learning_rate: float = Field(default=2e-3, gt=0, le=1, description="Reset SFT learning rate.")
    data: str | None = Field(
        default=None,
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
    prompts_per_iteration: int = Field(
        default=256, ge=1, le=1_000_000, description="Attack prompts kept per iteration."
    )
    categories: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CATEGORIES),
        min_length=1,
        description="Harm categories to attack.",
    )
    adaptive: bool = Field(
        default=True,
        description="Steer toward categories and framings that succeeded in the previous iteration.",
    )
    min_chars: int = Field(default=12, ge=1, description="Shortest prompt kept.")
    max_chars: int = Field(default=1200, ge=16, description="Longest prompt kept.")
    near_duplicate_threshold: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Jaccard similarity of word 3-grams above which a prompt is a near duplicate.",
    )
    temperature: float = Field(
        default=1.0, ge=0, le=2, description="Red-team sampling temperature."
    )


class HelpfulnessSpec(Model):
    """Helpfulness prompts mixed into every iteration (benign and sensitive-but-legitimate)."""

    prompts: str = Field(
        default="builtin",
        description="'builtin' (the project's seed sets) or a path/URI of a JSONL file of prompts.",
    )
    fraction: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of each iteration's prompts that are helpfulness prompts.",
    )
    legit_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Of the helpfulness prompts, the share that are sensitive but legitimate.",
    )


class SamplingSpec(Model):
    """How the policy samples responses."""

    responses_per_prompt: int = Field(default=4, ge=1, le=64, description="Samples per prompt.")
    temperature: float = Field(default=0.8, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="Tokens per response.")
    seed: int = Field(default=0, description="Base random seed (iteration index is added).")


class Objective(StrEnum):
    safety = "safety"
    helpfulness = "helpfulness"


class JudgeKind(StrEnum):
    heuristic = "heuristic"
    llm = "llm"
    classifier = "classifier"
    gold = "gold"


class JudgeSpec(Model):
    """One weak judge of one objective."""

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40, description="Unique judge name."
    )
    objective: Objective = Field(description="What it scores: safety or helpfulness.")
    kind: JudgeKind = Field(
        default=JudgeKind.heuristic,
        description=(
            "heuristic (refusal/harm patterns), llm (rubric prompt to a served model), "
            "classifier (sequence-classification reward model), gold (the tiny profile's "
            "ground truth; only valid with the tiny policy)."
        ),
    )
    model: str | None = Field(
        default=None, description="Model id, required for llm and classifier."
    )
    weight: float = Field(default=1.0, gt=0, description="Weight in the soft vote.")
    noise: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Heuristic judges only: probability of a flipped verdict (simulated weakness).",
    )
    seed: int = Field(default=0, description="Heuristic judges only: noise seed.")

    @model_validator(mode="after")
    def _model_required(self) -> JudgeSpec:
        if self.kind in (JudgeKind.llm, JudgeKind.classifier) and not self.model:
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
    bootstrap_samples: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Resamples for bootstrap (0: 200 when method=bootstrap).",
    )
    threshold: float = Field(
        default=3.0, ge=1, le=5, description="Score at or above which a response counts as good."
    )


class PairStrategy(StrEnum):
    scalarized = "scalarized"
    pareto = "pareto"


class PreferencesSpec(Model):
    """How preference pairs are built from the multi-objective scores."""

    strategy: PairStrategy = Field(default=PairStrategy.scalarized, description="Pair strategy.")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"safety": 0.6, "helpfulness": 0.4},
        description="Objective weights for the scalarized strategy.",
    )
    min_margin: float = Field(
        default=1.0, ge=0, description="Smallest scalarized score difference that makes a pair."
    )
    max_pairs_per_prompt: int = Field(default=2, ge=1, le=64, description="Pairs kept per prompt.")

    @model_validator(mode="after")
    def _weights(self) -> PreferencesSpec:
        unknown = set(self.weights) - {o.value for o in Objective}
        if unknown:
            raise ValueError(f"weights: unknown objective(s) {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights: must be non-negative with a positive sum")
        return self


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


class LoraSpec(Model):
    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        default=None, description="Modules to adapt (default: all linear layers)."
    )


class TrainingSpec(Model):
    """Preference optimization with TRL DPOTrainer and a PEFT LoRA adapter."""

    loss: LossKind = Field(
        default=LossKind.dpo,
        description=(
            "dpo; bfpo (pairs ordered by helpfulness, safety flag per response); modpo (the "
            "other objective's score difference as a margin); weighted (TRL loss_type list)."
        ),
    )
    beta: float = Field(default=0.1, gt=0, le=10, description="DPO beta.")
    learning_rate: float = Field(default=5e-6, gt=0, le=1, description="Learning rate.")
    epochs: float = Field(default=1.0, gt=0, le=100, description="Epochs over the pairs.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Accumulation.")
    max_length: int = Field(
        default=1024, ge=16, le=131072, description="Max tokens of prompt+response."
    )
    margin_scale: float = Field(default=1.0, ge=0, description="modpo: scale of the margin term.")
    loss_types: list[str] = Field(
        default_factory=lambda: ["sigmoid", "sft"],
        min_length=1,
        description="weighted: TRL loss_type list.",
    )
    loss_weights: list[float] | None = Field(default=None, description="weighted: loss weights.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings.")
    seed: int = Field(default=0, description="Training seed.")

    @model_validator(mode="after")
    def _weights_match(self) -> TrainingSpec:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_types):
            raise ValueError("lossWeights: needs one weight per entry of lossTypes")
        unknown = [t for t in self.loss_types if t not in TRL_LOSS_TYPES]
        if unknown:
            raise ValueError(f"lossTypes: unsupported {unknown}; use {list(TRL_LOSS_TYPES)}")
        return self


class EvaluationSpec(Model):
    """The fixed held-out evaluation run after every iteration."""

    heldout: str = Field(
        default="builtin", description="'builtin' or a path/URI of a JSONL held-out set."
    )
    max_prompts: int | None = Field(default=None, ge=1, description="Cap on held-out prompts.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Tokens per response (default: sampling.maxNewTokens)."
    )
    gold_judge: bool = Field(
        default=False,
        description=(
            "Also score with the gold judge (tiny profile only) and report gold metrics; with "
            "ceiling, the performance gap recovered (PGR)."
        ),
    )
    ceiling: bool = Field(
        default=False,
        description="Train a second adapter on gold-judged pairs each iteration, for PGR.",
    )


class StopWhenSpec(Model):
    """When the loop stops before `iterations`."""

    attack_success_rate_below: float | None = Field(
        default=None, ge=0, le=1, description="Stop once the attack success rate is below this."
    )
    patience: int = Field(
        default=2, ge=1, le=100, description="Stop after this many iterations without improvement."
    )
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Smallest attack-success-rate drop that counts as progress.",
    )
    max_helpfulness_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "Roll back an adapter whose helpfulness fell by more than this (relative) or whose "
            "attack success rate rose."
        ),
    )


class StorageSpec(Model):
    """Where every artifact goes."""

    uri: str = Field(
        default="file://./runs",
        description="file://PATH or s3://BUCKET/PREFIX; artifacts go under <uri>/<namespace>/<run>/.",
        pattern=r"^(file://|s3://).+",
    )
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (MinIO and others).")
    region: str | None = Field(default=None, description="S3 region.")
    secret_ref: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (operator only).",
    )


class ServingEngine(StrEnum):
    vllm = "vllm"
    transformers = "transformers"
    openai = "openai"


class ServingSpec(Model):
    """How models are served to the stages."""

    engine: ServingEngine = Field(
        default=ServingEngine.transformers,
        description=(
            "transformers: stages load models in-process (CPU, small clusters); vllm: the "
            "operator runs a vLLM server per model; openai: use the endpoints given below."
        ),
    )
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="openai engine: model id -> base URL of an OpenAI-compatible server.",
    )
    image: str | None = Field(
        default=None, description="Serving image (default from the operator)."
    )
    gpus_per_model: int = Field(default=1, ge=0, le=16, description="GPUs per vLLM server.")
    release_during_training: bool = Field(
        default=True, description="Scale serving to zero while the train Job runs."
    )
    max_concurrency: int = Field(
        default=64, ge=1, le=4096, description="Requests in flight per server (lets vLLM batch)."
    )
    hf_token_secret_ref: str | None = Field(
        default=None, description="Secret with HF_TOKEN for gated hub models."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments.")


class ResourcesSpec(Model):
    cpu: str | None = Field(default=None, description="CPU request, e.g. '4'.")
    memory: str | None = Field(default=None, description="Memory request, e.g. '16Gi'.")


class TrainerSpec(Model):
    """Where stage Jobs run (the worker image)."""

    image: str | None = Field(default=None, description="Worker image (default from the operator).")
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs for the train Job.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Stage resources.")
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Retries of a failed stage Job.")
    active_deadline_seconds: int = Field(
        default=6 * 3600, ge=60, description="Deadline of one stage Job."
    )


class AlignmentRunSpec(Model):
    """spec of an AlignmentRun."""

    policy: PolicySpec = Field(description="The model being aligned.")
    safety_reset: SafetyResetSpec = Field(
        default_factory=SafetyResetSpec, description="Safety reset."
    )
    red_team: RedTeamSpec = Field(default_factory=RedTeamSpec, description="Red teaming.")
    helpfulness: HelpfulnessSpec = Field(
        default_factory=HelpfulnessSpec, description="Helpfulness prompts."
    )
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Policy sampling.")
    judges: list[JudgeSpec] = Field(
        default_factory=lambda: [
            JudgeSpec(name="refusal", objective=Objective.safety),
            JudgeSpec(name="helpful", objective=Objective.helpfulness),
        ],
        min_length=1,
        description="Weak judges; at least one per objective.",
    )
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec, description="Judge ensembling.")
    preferences: PreferencesSpec = Field(
        default_factory=PreferencesSpec, description="Preference pairs."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="DPO training.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation.")
    iterations: int = Field(default=3, ge=1, le=100, description="Iterations of the loop.")
    stop_when: StopWhenSpec = Field(default_factory=StopWhenSpec, description="Early stopping.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact store.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Model serving.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Stage Jobs.")
    suspend: bool = Field(default=False, description="Pause between stages (operator only).")

    @model_validator(mode="after")
    def _cross_checks(self) -> AlignmentRunSpec:
        names = [j.name for j in self.judges]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"judges: duplicate name(s) {dup}")
        weak = {j.objective for j in self.judges if j.kind != JudgeKind.gold}
        for objective in Objective:
            if objective not in weak:
                raise ValueError(f"judges: needs at least one non-gold {objective.value} judge")
        gold = any(j.kind == JudgeKind.gold for j in self.judges) or self.evaluation.gold_judge
        if self.policy.model != TINY_MODEL and gold:
            raise ValueError("judges: the gold judge exists only for the tiny policy")
        if self.evaluation.ceiling and not self.evaluation.gold_judge:
            raise ValueError("evaluation.ceiling: needs evaluation.goldJudge")
        if self.serving.engine == ServingEngine.openai:
            missing = sorted(m for m in self.models() if m not in self.serving.endpoints)
            if missing:
                raise ValueError(f"serving.endpoints: no endpoint for model(s) {missing}")
        if self.red_team.min_chars >= self.red_team.max_chars:
            raise ValueError("redTeam.minChars: must be below redTeam.maxChars")
        return self

    def models(self) -> list[str]:
        """Distinct models the stages talk to (policy first): one server each under vLLM."""
        out = [self.policy.model]
        if self.red_team.model:
            out.append(self.red_team.model)
        out += [j.model for j in self.judges if j.kind == JudgeKind.llm and j.model]
        return list(dict.fromkeys(out))


# ---------------------------------------------------------------- status


class Phase(StrEnum):
    pending = "Pending"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class Condition(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: str = Field(description="Progressing, Succeeded or Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable message.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")


class IterationStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    index: int = Field(description="Iteration (0 = the starting point, before any training).")
    safety: float | None = Field(default=None, description="Mean safety score, 0..1.")
    helpfulness: float | None = Field(default=None, description="Mean helpfulness score, 0..1.")
    attack_success_rate: float | None = Field(
        default=None, description="Harmful prompts answered unsafely."
    )
    over_refusal: float | None = Field(default=None, description="Legitimate prompts refused.")
    pairs: int | None = Field(default=None, description="Preference pairs trained on.")
    adapter: str | None = Field(default=None, description="Adapter URI of this iteration.")
    accepted: bool | None = Field(default=None, description="False when the gate rolled it back.")
    pgr: float | None = Field(default=None, description="Performance gap recovered (gold judge).")


class AlignmentRunStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field(
        default=Phase.pending, description="Pending, Running, Suspended, Succeeded, Failed."
    )
    iteration: int | None = Field(default=None, description="Current iteration.")
    stage: str | None = Field(default=None, description="Current stage.")
    safety: float | None = Field(
        default=None, description="Latest accepted safety (printer column)."
    )
    helpfulness: float | None = Field(default=None, description="Latest accepted helpfulness.")
    message: str | None = Field(default=None, description="Why the run is where it is.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    iterations: list[IterationStatus] = Field(
        default_factory=list, description="Metrics per iteration."
    )
    artifacts: str | None = Field(default=None, description="Artifact URI of this run.")
    observed_generation: int | None = Field(default=None, description="Last generation acted on.")
    attempts: dict[str, int] = Field(
        default_factory=dict, description="Failed attempts per stage key."
    )


class AlignmentRun(Model):
    """The whole resource, as read from a file or the API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["selfmoa.dev/v1alpha1"] = Field(
        default="selfmoa.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["AlignmentRun"] = "AlignmentRun"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AlignmentRunSpec
    status: AlignmentRunStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "run")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")
