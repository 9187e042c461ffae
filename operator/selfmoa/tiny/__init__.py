"""The tiny profile: seed data, a tiny base model built locally, and its gold judge.

`ensure_base` imports torch lazily (only when a model is actually needed); the data API and the
gold judge are pure and cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selfmoa.tiny.data import (
    attack_seeds,
    benign_prompts,
    categories,
    compliance_examples,
    heldout,
    legit_prompts,
    refusal_templates,
)


def ensure_base(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Directory of the tiny base model (config, weights, tokenizer), built once and cached."""
    from selfmoa.tiny.build import ensure_base as _ensure

    return _ensure(cache_dir, progress)


__all__ = [
    "attack_seeds",
    "benign_prompts",
    "categories",
    "compliance_examples",
    "ensure_base",
    "heldout",
    "legit_prompts",
    "refusal_templates",
]
