"""Seed data the project ships: prompts per harm category and topic, response templates, attack
framings, the fixed held-out and validation splits, and the oracle that knows which template a
response reproduces (the tiny profile's gold judge).

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
)

__all__ = [
    "attack_seeds",
    "benign_prompts",
    "categories",
    "compliance_examples",
    "heldout",
    "legit_prompts",
    "refusal_templates",
]
