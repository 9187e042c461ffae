"""The tiny demo model: a ~100k-parameter base built locally from the seed data (no download).

`ensure_base` imports torch lazily, only when a model is actually needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def ensure_base(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Directory of the tiny base model (config, weights, tokenizer), built once and cached."""
    from selfmoa.tiny.build import ensure_base as _ensure

    return _ensure(cache_dir, progress)


__all__ = ["ensure_base"]
