"""The stages of the loop; the only code that touches models.

Each stage module has `run(ctx, out) -> summary`; `get_stage(name)` imports it on demand so that
listing or validating stages never loads torch.
"""

from __future__ import annotations

import importlib

from selfmoa.layout import ALL_STAGES
from selfmoa.stages.base import StageContext, StageError, StageFn, StageOutput, execute

__all__ = [
    "ALL_STAGES",
    "StageContext",
    "StageError",
    "StageFn",
    "StageOutput",
    "execute",
    "get_stage",
]


def get_stage(name: str) -> StageFn:
    if name not in ALL_STAGES:
        raise StageError(f"unknown stage '{name}' (one of: {', '.join(ALL_STAGES)})")
    module = importlib.import_module(f"selfmoa.stages.{name}")
    fn: StageFn = module.run
    return fn
