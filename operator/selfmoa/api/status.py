"""status of an AlignmentRun: written by the executors, read back by them and by users."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from selfmoa.api.base import Model

# Status is our own output, read back tolerantly: unknown fields are ignored (an older or newer
# operator wrote them) and non-finite numbers pass as they were written, never failing a read.
_STATUS_CONFIG = ConfigDict(
    alias_generator=to_camel, populate_by_name=True, extra="ignore", allow_inf_nan=True
)


class Phase(StrEnum):
    pending = "Pending"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class Condition(Model):
    model_config = _STATUS_CONFIG

    type: str = Field(
        description="Progressing, Succeeded, Failed, or StagesReused (an earlier run's stages taken over)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable message.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this condition was computed for."
    )


class IterationStatus(Model):
    model_config = _STATUS_CONFIG

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
    outcomes: dict[str, dict[str, float]] | None = Field(
        default=None,
        description=(
            "What the held-out answers were: prompt kind (harmful, benign, legit) -> outcome "
            "class (refusal, redirect, deflection, garbled, unsafe; on_topic, off_topic) -> "
            "share. Classed by outcomesSource."
        ),
    )
    outcomes_source: str | None = Field(
        default=None,
        description=(
            "'gold' (the tiny profile's oracle) or 'judges' (stated refusals and the weak "
            "safety labels only)."
        ),
    )


class ResultStatus(Model):
    """The run's result: its best accepted iteration (or the one the user exported)."""

    model_config = _STATUS_CONFIG

    iteration: int = Field(description="The chosen iteration (0 = the starting point).")
    adapter: str | None = Field(default=None, description="Adapter URI (none for the base).")
    attack_success_rate: float | None = Field(default=None, description="Its held-out ASR.")
    safety: float | None = Field(default=None, description="Its held-out mean safety, 0..1.")
    helpfulness: float | None = Field(
        default=None, description="Its held-out mean helpfulness, 0..1."
    )
    over_refusal: float | None = Field(default=None, description="Its held-out over-refusal.")
    why: str = Field(default="", description="Why this iteration is the result.")
    exported: str | None = Field(
        default=None, description="Where spec.output wrote it (adapter or merged model)."
    )


class AlignmentRunStatus(Model):
    model_config = _STATUS_CONFIG

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
    result: ResultStatus | None = Field(
        default=None, description="The best accepted iteration so far: the run's result."
    )
