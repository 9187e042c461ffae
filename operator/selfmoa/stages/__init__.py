"""The stages of the loop; the only code that touches models.

Each stage module has `run(ctx, out) -> summary` and an entry in `selfmoa.run.stage_table`;
`selfmoa.stages.runner` runs them for both executors.
"""

from __future__ import annotations

from selfmoa.stages.base import StageContext, StageError, StageFn, StageOutput, execute

__all__ = ["StageContext", "StageError", "StageFn", "StageOutput", "execute"]
