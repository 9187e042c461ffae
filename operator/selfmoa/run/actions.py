"""The planner's vocabulary: what an executor observes of a run (`Observed`) and the one action
the planner answers with (`RunStage`, `Wait` or `Finish`).

Plain frozen values, no behaviour: the planner (`selfmoa.run.planner`) decides over them, the
status (`selfmoa.run.conditions`) reports them, and both executors build and read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from selfmoa.api.spec import Phase
from selfmoa.run import layout
from selfmoa.run.metrics import Metrics


@dataclass(frozen=True)
class StageFailure:
    iteration: int
    stage: str
    message: str
    #: How the stage ended (`selfmoa.api.exits.Exit`): its Pod's exit code, or the class of the
    #: exception a local stage raised; None: unknown (read as a stage failure).
    exit_code: int | None = None
    #: The condition reason when the stage never ran (CANNOT_START), instead of one from its
    #: exit code.
    reason: str | None = None


#: The reason of a run whose stage's container can't start (its image, a missing Secret): a
#: person fixes the cause and deletes the Job, and the run goes on.
CANNOT_START = "StageCannotStart"
#: What that reason tells the reader to do.
CANNOT_START_ADVICE = (
    "fix the cause (spec.trainer.image, the chart's config.workerImage, a missing Secret), then "
    "delete the stage's Job and the run goes on"
)


@dataclass(frozen=True)
class Reuse:
    """This run took over finished stages an earlier run left at the same store path."""

    stages: int
    #: Which run left them: `namespace/name uid UID` (or `a local run`) and when it started.
    source: str


@dataclass(frozen=True)
class Observed:
    """What an executor knows about a run right now."""

    #: Finished stages: (iteration, stage) with a manifest in the store.
    done: frozenset[tuple[int, str]] = frozenset()
    #: Metrics of every evaluated iteration.
    metrics: Mapping[int, Metrics] = field(default_factory=dict)
    #: A stage being worked on right now (operator: its Job is active).
    running: tuple[int, str] | None = None
    #: A stage that failed for good (retries exhausted).
    failure: StageFailure | None = None
    #: A spec error found outside the schema (names the field).
    invalid: str | None = None
    #: Why the running stage is not actually running yet (reason, message): e.g. its Job waits
    #: for admission by a queue, or was preempted. Waiting is never a failure.
    held: tuple[str, str] | None = None
    #: Where the export stage wrote the run's result (`spec.output`), once it has.
    exported: str | None = None
    #: Finished stages of an earlier run that this run took over (shown as a condition).
    reused: Reuse | None = None


@dataclass(frozen=True)
class RunStage:
    iteration: int
    stage: str
    #: The iteration whose adapter this stage starts from (0: the starting point).
    parent: int

    @property
    def key(self) -> str:
        return f"{layout.iteration_dir(self.iteration)}/{self.stage}"


@dataclass(frozen=True)
class Wait:
    """Nothing to start: a stage is running, or the run is suspended."""

    reason: str
    message: str


@dataclass(frozen=True)
class Finish:
    """The run is over: `phase` Succeeded or Failed."""

    phase: Phase
    reason: str
    message: str


Action = RunStage | Wait | Finish
