"""export: the run's result, written to `spec.output` when the loop has ended.

Runs for the iteration the gate chose (the planner passes it as this stage's iteration) and
delegates to `selfmoa.export`; its manifest in the run's store records where the result went.
"""

from __future__ import annotations

from typing import Any

from selfmoa.export import export_run
from selfmoa.stages.base import StageContext, StageError, StageOutput


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    output = ctx.spec.output
    if output is None:
        raise StageError("export: the run has no spec.output")
    storage = ctx.spec.storage
    result = export_run(
        ctx.store.uri,
        output.uri,
        merge=output.merge,
        iteration=ctx.iteration,
        # Re-running the stage (no manifest here: the last attempt died) replaces a partial
        # export of this run; the export's own manifest, written last, marks a complete one.
        force=True,
        endpoint=storage.endpoint,
        region=storage.region,
        progress=lambda line: ctx.progress(0, 1, line),
    )
    return {"out": result.out, "merged": result.merged, "why": result.why}
