"""The one stage runner, for both executors.

`selfmoa run` (the local executor, stage after stage in one process) and `selfmoa stage` (one
stage: what the operator's Jobs run) both carry a stage out through `StageRunner.run`, so a stage
behaves the same on a laptop and in a Pod. The runner owns the scratch directory and the engine
provider for as long as it is open; a stage module is imported only when it runs (listing or
validating stages never loads torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.base import EngineError
from selfmoa.engines.provider import EngineProvider
from selfmoa.export import ExportError, ExportFailed
from selfmoa.judges.base import JudgeError
from selfmoa.run import stage_table
from selfmoa.run.evaluation import UnmeasuredError
from selfmoa.stages.base import (
    Progress,
    StageContext,
    StageError,
    StageFn,
    execute,
    no_progress,
)
from selfmoa.store import Store
from selfmoa.store.scratch import scratch_dir


def load_stage(name: str) -> StageFn:
    """The `run(ctx, out)` of the stage called `name` (its module imported now)."""
    try:
        definition = stage_table.get(name)
    except KeyError as e:
        raise StageError(str(e.args[0])) from None
    fn: StageFn = importlib.import_module(definition.module).run
    return fn


class StageRunner:
    """Runs stages of one run against its store, with one scratch directory and one provider."""

    def __init__(
        self, spec: AlignmentRunSpec, store: Store, *, workdir: Path, engines: EngineProvider
    ) -> None:
        self.spec = spec
        self.store = store
        self.workdir = workdir
        self.engines = engines

    def run(
        self, stage: str, iteration: int, *, parent: int, progress: Progress = no_progress
    ) -> tuple[dict[str, Any], bool]:
        """Run `stage` of `iteration` unless its manifest exists: (manifest, ran)."""
        ctx = StageContext(
            spec=self.spec,
            store=self.store,
            iteration=iteration,
            workdir=self.workdir,
            engines=self.engines,
            parent=parent,
            progress=progress,
        )
        try:
            return execute(stage, load_stage(stage), ctx)
        except (EngineError, JudgeError, UnmeasuredError, ExportError, ExportFailed) as e:
            # Known failures with a message a person can act on: one line, no traceback.
            raise StageError(f"{stage}: {e}") from e


@contextmanager
def open_runner(spec: AlignmentRunSpec, store: Store) -> Iterator[StageRunner]:
    """A runner with a fresh scratch directory; engines are closed and scratch removed after."""
    provider = EngineProvider(spec, shared=store)
    try:
        # Sweeps the scratch a killed stage left behind, and temp files of half-done writes.
        store.sweep_temp()
        with scratch_dir() as tmp:
            yield StageRunner(spec, store, workdir=tmp, engines=provider)
    finally:
        provider.close()
