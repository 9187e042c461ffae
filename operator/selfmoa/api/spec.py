"""The AlignmentRun resource as typed models: the single source of the CRD schema.

Every field has a default and a description, so the same model validates a `selfmoa run FILE`
input on a laptop and the object a user applies to a cluster; `selfmoa crd` turns it into the
CustomResourceDefinition. Field names are camelCase on the wire (Kubernetes convention) and
snake_case in Python.

The sections live in their own modules (`base`, `loop`, `evaluation`, `judging`,
`optimization`, `infra`, `status`); this module holds the top-level models and re-exports every name, so
`from selfmoa.api.spec import X` works for all of them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from selfmoa.api.base import (
    DEFAULT_CATEGORIES,
    MAX_DEADLINE_SECONDS,
    MAX_NEW_TOKENS,
    MAX_SEED,
    TINY_MODEL,
    Bool,
    Int,
    LabelValue,
    Model,
    SpecError,
    public_sets,
)
from selfmoa.api.evaluation import EvaluationSpec, StopWhenSpec
from selfmoa.api.infra import (
    Device,
    ModelCacheSpec,
    OutputSpec,
    ResourcesSpec,
    ServingEngine,
    ServingSpec,
    StorageSpec,
    TrainerSpec,
)
from selfmoa.api.judging import (
    EnsembleMethod,
    EnsembleSpec,
    JudgeFormat,
    JudgeKind,
    JudgeSpec,
    Objective,
    PairStrategy,
    PreferencesSpec,
)
from selfmoa.api.loop import (
    HelpfulnessSpec,
    ModelRef,
    PolicySpec,
    RedTeamSpec,
    SafetyResetSpec,
    SamplingSpec,
    SelfDeclineSpec,
)
from selfmoa.api.names import namespace_problem, run_name_problem
from selfmoa.api.optimization import (
    TRL_LOSS_TYPES,
    LoraSpec,
    LossKind,
    OpeningAnchorSpec,
    TrainingSpec,
    TrainingStrategy,
)
from selfmoa.api.status import (
    AlignmentRunStatus,
    Condition,
    IterationStatus,
    Phase,
    ResultStatus,
)

GROUP = "selfmoa.dev"
VERSION = "v1alpha1"
KIND = "AlignmentRun"
PLURAL = "alignmentruns"
SINGULAR = "alignmentrun"
SHORT_NAMES = ["arun"]
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_NAME = "run"
DEFAULT_NAMESPACE = "default"
#: Tokens a request's prompt needs at least (an attack, its chat template, the red team's
#: instruction with examples): a completion budget must leave this much of the context.
MIN_PROMPT_TOKENS = 256


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
    iterations: Int = Field(default=3, ge=1, le=100, description="Iterations of the loop.")
    stop_when: StopWhenSpec = Field(default_factory=StopWhenSpec, description="Early stopping.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact store.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Model serving.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Stage Jobs.")
    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description=(
            "A shared, pre-seeded model cache volume: hub models are read from it, never "
            "downloaded (default: each run snapshots them into its store)."
        ),
    )
    suspend: Bool = Field(default=False, description="Pause between stages (operator only).")
    queue_name: LabelValue | None = Field(
        default=None,
        description=(
            "Kueue LocalQueue for the run's Jobs and serving pods (label "
            "kueue.x-k8s.io/queue-name); a Job waiting for admission is shown as waiting."
        ),
    )
    priority_class_name: LabelValue | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class).",
    )
    output: OutputSpec | None = Field(
        default=None,
        description="Export the result when the run ends (adapter, or the merged model).",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> AlignmentRunSpec:
        self._check_judges()
        if self.serving.engine == ServingEngine.openai:
            missing = sorted(m for m in self.models() if m not in self.serving.endpoints)
            if missing:
                raise ValueError(f"serving.endpoints: no endpoint for model(s) {missing}")
        if self.red_team.min_chars >= self.red_team.max_chars:
            raise ValueError("redTeam.minChars: must be below redTeam.maxChars")
        self._check_served_adapter()
        if self.training.loss == LossKind.modpo and self.preferences.weights.get("safety", 0) <= 0:
            # MODPO divides by the weight of the objective it trains (safety).
            raise ValueError("training.loss modpo: needs preferences.weights.safety > 0")
        problem = self._token_budget_problem()
        if problem:
            raise ValueError(problem)
        reset = self.safety_reset
        if reset.enabled and reset.data is None and self.policy.model != TINY_MODEL:
            # The reset stage would fail at run time, after the serving pods started.
            raise ValueError(
                "safetyReset.data: required when the policy is not the built-in tiny model (a "
                "JSONL of {prompt, response} compliance examples); or set safetyReset.enabled: "
                "false"
            )
        self._check_capability_measure()
        return self

    def _check_judges(self) -> None:
        """Training judges: distinct names, none also an evaluation judge, a non-gold judge per
        objective; the gold judge (and the ceiling it trains) only where it exists."""
        names = [j.name for j in self.judges]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"judges: duplicate name(s) {dup}")
        both = sorted(set(names) & {j.name for j in self.evaluation.judges})
        if both:
            # An evaluation judge must be one that made no training pairs.
            raise ValueError(f"evaluation.judges: {both} also in judges (names must differ)")
        weak = {j.objective for j in self.judges if j.kind != JudgeKind.gold}
        for objective in Objective:
            if objective not in weak:
                raise ValueError(f"judges: needs at least one non-gold {objective.value} judge")
        gold = any(j.kind == JudgeKind.gold for j in self.judges) or self.evaluation.gold_judge
        if self.policy.model != TINY_MODEL and gold:
            raise ValueError("judges: the gold judge exists only for the tiny policy")
        if self.evaluation.ceiling and not self.evaluation.gold_judge:
            raise ValueError("evaluation.ceiling: needs evaluation.goldJudge")

    def _check_served_adapter(self) -> None:
        """A served policy starts from an adapter the server can load itself."""
        served = self.serving.engine in (ServingEngine.vllm, ServingEngine.openai)
        adapter = self.policy.adapter or ""
        if served and adapter.startswith("s3://") and not self.safety_reset.enabled:
            # vLLM loads a LoRA from its own filesystem or the hub, never from a bucket (the
            # adapter agent delivers only the run's own adapters; the reset stores one).
            raise ValueError(
                "policy.adapter: a served policy can't start from an s3:// adapter; give a hub "
                "id, enable safetyReset (its adapter is served from the run's store), or use "
                "serving.engine: transformers"
            )

    def _check_capability_measure(self) -> None:
        """`stopWhen.maxCapabilityDrop` needs something to measure capability on."""
        if self.stop_when.max_capability_drop is None or self.evaluation.lm_eval is not None:
            return
        references = "benign-qa" in (public_sets(self.evaluation.validation) or [])
        if self.policy.model != TINY_MODEL and not references:
            raise ValueError(
                "stopWhen.maxCapabilityDrop: needs a capability measure: evaluation.lmEval, "
                "or reference answers on the validation split (evaluation.validation naming "
                "public:benign-qa); only the tiny policy has one built in"
            )
        if not references and self.evaluation.validation not in ("builtin", "none"):
            # The gate decides on the validation file, which has no reference answers.
            raise ValueError(
                "stopWhen.maxCapabilityDrop: needs evaluation.validation builtin or none "
                "(a validation file has no reference answers to measure capability on)"
            )

    def _token_budget_problem(self) -> str | None:
        """Why a request the stages will send can't fit vLLM's `--max-model-len` (vLLM would
        answer it with HTTP 400 mid-run), or None."""
        if self.serving.engine != ServingEngine.vllm:
            return None
        limit = self.serving.max_model_len()
        if limit is None:
            return None
        asks = [
            ("sampling.maxNewTokens", self.sampling.max_new_tokens, "the policy's answers"),
        ]
        if self.red_team.model and self.red_team.model_share > 0:
            asks.append(
                (
                    "redTeam.promptsPerRequest",
                    self.red_team.reply_tokens(),
                    f"{self.red_team.prompts_per_request} attack prompts per red-team request",
                )
            )
        for field, tokens, what in asks:
            room = limit - tokens
            if room < MIN_PROMPT_TOKENS:
                return (
                    f"{field}: {what} ask for {tokens} completion tokens, which leaves {room} for "
                    f"the prompt within vLLM's --max-model-len {limit} (serving.extraArgs; at "
                    f"least {MIN_PROMPT_TOKENS} needed): lower it or raise --max-model-len"
                )
        return None

    def models(self) -> list[str]:
        """Distinct models the stages talk to (policy first): one server each under vLLM."""
        out = [self.policy.model]
        if self.red_team.model:
            out.append(self.red_team.model)
        judges = [*self.judges, *self.evaluation.judges]
        out += [j.model for j in judges if j.kind == JudgeKind.llm and j.model]
        return list(dict.fromkeys(out))


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

    @model_validator(mode="after")
    def _names(self) -> AlignmentRun:
        if "name" in self.metadata:
            problem = run_name_problem(self.metadata["name"])
            if problem:
                raise ValueError(f"metadata.name: {problem}")
        if "namespace" in self.metadata:
            problem = namespace_problem(self.metadata["namespace"])
            if problem:
                raise ValueError(f"metadata.namespace: {problem}")
        return self

    # The name and namespace become store paths: they are checked again here because callers
    # may set them after validation (`selfmoa run --name`), and a bad one must never get that far.
    @property
    def name(self) -> str:
        name = self.metadata.get("name") or DEFAULT_NAME
        problem = run_name_problem(name)
        if problem:
            raise SpecError(f"metadata.name: {problem}")
        return str(name)

    @property
    def namespace(self) -> str:
        namespace = self.metadata.get("namespace") or DEFAULT_NAMESPACE
        problem = namespace_problem(namespace)
        if problem:
            raise SpecError(f"metadata.namespace: {problem}")
        return str(namespace)


__all__ = [
    "API_VERSION",
    "DEFAULT_CATEGORIES",
    "GROUP",
    "KIND",
    "MAX_DEADLINE_SECONDS",
    "MAX_NEW_TOKENS",
    "MAX_SEED",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "TINY_MODEL",
    "TRL_LOSS_TYPES",
    "VERSION",
    "AlignmentRun",
    "AlignmentRunSpec",
    "AlignmentRunStatus",
    "Bool",
    "Condition",
    "Device",
    "EnsembleMethod",
    "EnsembleSpec",
    "EvaluationSpec",
    "HelpfulnessSpec",
    "Int",
    "IterationStatus",
    "JudgeFormat",
    "JudgeKind",
    "JudgeSpec",
    "LoraSpec",
    "LossKind",
    "Model",
    "ModelCacheSpec",
    "ModelRef",
    "Objective",
    "OpeningAnchorSpec",
    "OutputSpec",
    "PairStrategy",
    "Phase",
    "PolicySpec",
    "PreferencesSpec",
    "RedTeamSpec",
    "ResourcesSpec",
    "ResultStatus",
    "SafetyResetSpec",
    "SamplingSpec",
    "SelfDeclineSpec",
    "ServingEngine",
    "ServingSpec",
    "SpecError",
    "StopWhenSpec",
    "StorageSpec",
    "TrainerSpec",
    "TrainingSpec",
    "TrainingStrategy",
]
