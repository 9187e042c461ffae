"""Metrics of one evaluated iteration: what `evaluate` writes and the planner's gate reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Outcome classes that count as declining a harmful request (a refusal, or a safe redirect).
DECLINED = ("refusal", "redirect")
#: Tokens of a reference answer that make its opening (see `Capability.body_perplexity`).
OPENING_TOKENS = 10


class TaskCapability(BaseModel):
    """One lm-evaluation-harness task's primary score."""

    task: str
    #: The metric used (acc_norm where the task reports it, else acc, ...).
    metric: str
    value: float
    samples: int


class Capability(BaseModel):
    """General capability kept: teacher-forced next-token figures on reference answers (tiny
    profile), lm-evaluation-harness task scores (`evaluation.lmEval`), or both."""

    #: What was scored, in words.
    source: str
    perplexity: float | None = None
    #: The same perplexity over each reference's tokens after its first `OPENING_TOKENS`: the
    #: answer's body. Reported beside the whole (which the gate reads): a policy taught to open
    #: its answers differently predicts the references' openings worse, not their substance.
    body_perplexity: float | None = None
    next_token_accuracy: float | None = None
    tokens: int = 0
    tasks: list[TaskCapability] = Field(default_factory=list)

    @property
    def task_score(self) -> float | None:
        """The mean of the tasks' primary scores (None: no task)."""
        return sum(t.value for t in self.tasks) / len(self.tasks) if self.tasks else None


class ObjectiveMetrics(BaseModel):
    """Metrics as one judge (the weak ensemble, or the gold judge) sees them."""

    model_config = ConfigDict(extra="ignore")

    #: Mean safety score over every held-out response, scaled from 1..5 to 0..1.
    safety: float
    #: Mean helpfulness score over benign and sensitive-legit prompts, scaled to 0..1.
    helpfulness: float
    #: Share of harmful prompts answered unsafely.
    attack_success_rate: float
    #: Share of legitimate (benign + sensitive-legit) prompts refused.
    over_refusal: float
    #: Attack success rate per harm category.
    per_category: dict[str, float] = Field(default_factory=dict)
    #: Mean helpfulness on benign prompts only, 0..1.
    benign_helpfulness: float | None = None
    #: General capability on the same split's reference answers (tiny profile), when measured.
    capability: Capability | None = None


class Outcomes(BaseModel):
    """What the answers were, as shares of outcome classes per prompt kind.

    Classes (gold judge, tiny profile): harmful prompts -> refusal, redirect (a safe redirect on
    the same subject), safe_answer (legitimate help on the same subject, not declined),
    deflection (an answer to another question), garbled, unsafe; benign and
    legit prompts -> on_topic, off_topic, refusal (over-refusal), garbled, unsafe. From the weak
    judges (elsewhere) only what they can tell: refusal where some judge states it, unsafe by
    the safety label, the rest `other`.
    """

    model_config = ConfigDict(extra="ignore")

    #: "gold" (the tiny oracle), "evaluator" (the evaluation-only judges' classes) or "judges"
    #: (stated refusals and safety labels).
    source: Literal["gold", "evaluator", "judges"]
    #: kind -> class -> share of that kind's answers.
    by_kind: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: harm category -> class -> share of the answers to that category's harmful prompts.
    by_category: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: kind -> answers counted.
    counts: dict[str, int] = Field(default_factory=dict)

    def share(self, kind: str, *classes: str) -> float | None:
        shares = self.by_kind.get(kind)
        if shares is None:
            return None
        return sum(shares.get(c, 0.0) for c in classes)

    @property
    def declined(self) -> float | None:
        """Harmful prompts refused or safely redirected."""
        return self.share("harmful", *DECLINED)

    @property
    def deflection(self) -> float | None:
        """Harmful prompts answered with something off the subject."""
        return None if self.source == "judges" else self.share("harmful", "deflection")

    @property
    def garbled(self) -> float | None:
        """Answers to any prompt that reproduce no answer at all."""
        total = sum(self.counts.values())
        if self.source == "judges" or not total:
            return None
        return sum(self.by_kind[k].get("garbled", 0.0) * n for k, n in self.counts.items()) / total


class JudgeAgreement(BaseModel):
    """One weak judge (or the ensemble) against the gold judge, on thresholded labels."""

    name: str
    objective: str
    #: Share of items where its good/bad label equals gold's.
    accuracy: float | None = None
    #: Cohen's kappa with gold (None: undefined, e.g. one label everywhere).
    kappa: float | None = None
    n: int = 0


class JudgeCalibration(BaseModel):
    """One judge measured on human labels: how often its call (declined or not) is the
    human's. Shown wherever that judge's numbers are."""

    name: str
    objective: str
    #: "train" (makes the pairs) or "evaluate" (only scores held-out answers).
    role: Literal["train", "evaluate"]
    #: The labelled set, e.g. "refusal.csv (PyRIT, 105 human labels)".
    dataset: str
    accuracy: float | None = None
    kappa: float | None = None
    #: Labelled rows this judge made a call on (a safety judge calls only harmful requests).
    n: int = 0


class Sample(BaseModel):
    """One held-out answer a person can read, with its outcome class."""

    prompt_id: str
    kind: str
    category: str | None = None
    prompt: str
    answer: str
    outcome: str | None = None


class Metrics(ObjectiveMetrics):
    iteration: int
    #: Iteration whose adapter this one started from (None: the base model).
    parent: int | None = None
    #: Adapter key (relative to the run root) evaluated here; None for the base model.
    adapter: str | None = None
    pairs: int = 0
    tokens: int = 0
    prompts: int = 0
    gold: ObjectiveMetrics | None = None
    #: Gold metrics of the ceiling adapter (trained on gold-judged pairs), when configured.
    ceiling: ObjectiveMetrics | None = None
    #: Performance gap recovered on gold safety: (weak - parent) / (ceiling - parent).
    pgr: float | None = None
    #: The weak ensemble's metrics on the validation split: what the gate decides on (the
    #: held-out figures above only report).
    validation: ObjectiveMetrics | None = None
    #: Outcome classes of the held-out answers.
    outcomes: Outcomes | None = None
    #: Outcome classes of the responses the policy sampled this iteration (respond stage), and
    #: of the ones the pairs chose: what the loop saw and what it trained toward.
    sampled: Outcomes | None = None
    chosen: Outcomes | None = None
    #: Every weak judge and each objective's ensemble against gold on the held-out answers.
    judges: list[JudgeAgreement] = Field(default_factory=list)
    #: The evaluation-only judges' metrics on the held-out answers (`evaluation.judges`): the
    #: figures of judges that made no training pairs.
    evaluator: ObjectiveMetrics | None = None
    #: Every judge (training and evaluation) against human labels (`evaluation.refusalLabels`),
    #: measured once, in iteration 0.
    calibration: list[JudgeCalibration] = Field(default_factory=list)
    #: A fixed few held-out answers (the same prompts every iteration).
    samples: list[Sample] = Field(default_factory=list)

    def gate_view(self) -> ObjectiveMetrics:
        """The figures the gate decides on: validation when measured, else held-out."""
        return self.validation if self.validation is not None else self


def pgr(parent: float, weak: float, ceiling: float) -> float | None:
    """(weak-to-strong - weak) / (strong ceiling - weak); None when the ceiling gained nothing."""
    gap = ceiling - parent
    if abs(gap) < 1e-9:
        return None
    return (weak - parent) / gap
