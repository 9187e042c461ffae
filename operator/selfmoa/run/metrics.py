"""Metrics of one evaluated iteration: what `evaluate` writes and the planner's gate reads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


def pgr(parent: float, weak: float, ceiling: float) -> float | None:
    """(weak-to-strong - weak) / (strong ceiling - weak); None when the ceiling gained nothing."""
    gap = ceiling - parent
    if abs(gap) < 1e-9:
        return None
    return (weak - parent) / gap
