"""Seed data the project ships: prompts per harm category and topic, response templates (unsafe
compliance, refusals, safe redirects, helpful answers), attack framings, the fixed validation and
held-out splits, and the oracle that knows which template a response reproduces and so its
outcome class (the tiny profile's gold judge).

Pure and cheap (JSON files shipped as package data, no torch). The red-team stage, the judges,
the evaluate stage and the tiny model's builder read it.
"""

from __future__ import annotations

from selfmoa.seeds.data import (
    attack_seeds,
    benign_prompts,
    categories,
    compliance_examples,
    heldout,
    legit_prompts,
    refusal_templates,
    validation,
)

__all__ = [
    "attack_seeds",
    "benign_prompts",
    "categories",
    "compliance_examples",
    "heldout",
    "legit_prompts",
    "refusal_templates",
    "validation",
]
