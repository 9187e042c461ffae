"""The tiny profile: its demo model and the seed data it is built from.

`build`: a ~100k-parameter base built locally from the seed data (no download); `ensure_base`
imports torch lazily, only when a model is actually needed. `seeds`: prompts per harm category
and topic, response templates (unsafe compliance, refusals, safe redirects, helpful answers) and
the fixed validation and held-out splits; `framings`: attack framings; `data/`: the JSON files
behind them (package data). The seed data is pure and cheap (no torch): the red-team stage, the
judges (the tiny gold judge, `selfmoa.judges.oracle`) and the evaluate stage read it too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selfmoa.store import Store


def ensure_base(
    cache_dir: Path, progress: Callable[[str], None] | None = None, shared: Store | None = None
) -> Path:
    """Directory of the tiny base model (config, weights, tokenizer), built once and cached.

    With `shared` (a run's store) it is built once per run, whichever stage or Pod needs it
    first, and every other one fetches that copy (`selfmoa.store.model_cache`)."""
    from selfmoa.tiny import build

    if shared is None:
        return build.ensure_base(cache_dir, progress)
    from selfmoa.store.model_cache import materialize

    def from_local_build(dest: Path, say: Callable[[str], None]) -> None:
        # This machine's own build (made once, shared with `selfmoa serve` and earlier runs)
        # is what gets published to the run; nothing is built twice on one machine.
        shutil.copytree(build.ensure_base(cache_dir, say), dest, dirs_exist_ok=True)

    return materialize(
        f"tiny-{build.cache_key()}",
        from_local_build,
        cache_dir=cache_dir,
        shared=shared,
        progress=progress,
    )


__all__ = ["ensure_base"]
