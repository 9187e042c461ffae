"""The stage table: every fact about a stage, stated once.

A run is a sequence of stages; each `StageDef` below says what a stage is called, which module
runs it, what it reads and writes, whether it trains (GPUs, the train resource class, serving
released meanwhile), whether it talks to model servers, when it runs, and which figures of its
summary tell a person what it did. The layout, the planner, the operator's child builders, the
console and the CLI's help all read this table; adding a stage is one entry here and one module
under `selfmoa.stages` (a test fails when the two disagree).

Pure data: importing it loads nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from selfmoa.run import layout

#: When a stage runs: once at the starting point (iteration 0), in every loop iteration (k >= 1),
#: both, or once at the end, for the iteration that is the run's result.
When = Literal["start", "loop", "both", "end"]


@dataclass(frozen=True)
class StageDef:
    name: str
    #: One line for `selfmoa stage --help` and the docs.
    description: str
    when: When
    #: Stages of the same iteration whose outputs it reads (the planner runs them first).
    reads: tuple[str, ...] = ()
    #: Files (or directories) it writes under its stage directory, besides `_manifest.json`.
    writes: tuple[str, ...] = ()
    #: Trains a model: GPUs and the train resource class for its Job; serving may be released.
    trains: bool = False
    #: Talks to model servers (the operator hands it the serving endpoints).
    uses_endpoints: bool = True
    #: Loads a model (the policy, a judge, a red-teamer) in-process or from the hub, so it needs
    #: the hub token of gated models.
    loads_models: bool = True
    #: Runs only when the run asks for it (the safety reset, the export).
    optional: bool = False
    #: Loads its model on the CPU whatever the run's GPUs (the export merges in host memory, so
    #: a model bigger than one GPU merges too): its Pod asks for no GPU, only the memory.
    cpu_only: bool = False
    #: Summary keys the console shows after the stage, in order.
    shows: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module whose `run(ctx, out)` carries the stage out."""
        return f"selfmoa.stages.{self.name}"


RESET: Final = StageDef(
    "reset",
    "safety reset: LoRA SFT on compliance data so the base's raw behaviour is visible",
    when="start",
    writes=(layout.ADAPTER,),
    trains=True,
    uses_endpoints=False,
    optional=True,
    shows=("examples", "steps", "loss_last"),
)
REDTEAM: Final = StageDef(
    "redteam",
    "attack prompts specific to the current policy, plus helpfulness prompts",
    when="loop",
    writes=(layout.PROMPTS,),
    shows=("prompts", "attacks"),
)
RESPOND: Final = StageDef(
    "respond",
    "the current policy samples N responses per prompt",
    when="loop",
    reads=("redteam",),
    writes=(layout.RESPONSES,),
    shows=("responses", "tokens"),
)
JUDGE: Final = StageDef(
    "judge",
    "weak judges score safety and helpfulness; ensembles combine them",
    when="loop",
    reads=("respond",),
    writes=(layout.JUDGMENTS,),
    shows=("responses",),
)
PAIRS: Final = StageDef(
    "pairs",
    "multi-objective preference pairs from the judged responses",
    when="loop",
    reads=("judge",),
    writes=(layout.PAIRS, layout.GOLD_PAIRS),
    uses_endpoints=False,
    loads_models=False,
    shows=("pairs", "mean_margin"),
)
TRAIN: Final = StageDef(
    "train",
    "preference optimization (TRL DPO and variants) of a LoRA adapter",
    when="loop",
    reads=("pairs",),
    writes=(layout.ADAPTER, layout.CEILING_ADAPTER),
    trains=True,
    uses_endpoints=False,
    shows=("pairs", "steps", "final_loss", "reward_accuracy"),
)
EVALUATE: Final = StageDef(
    "evaluate",
    "held-out safety, helpfulness, attack success rate and over-refusal",
    when="both",
    reads=("train", "reset"),
    writes=(layout.METRICS,),
)

EXPORT: Final = StageDef(
    "export",
    "writes the run's result (its best accepted iteration) to spec.output: adapter or merged model",
    when="end",
    uses_endpoints=False,
    optional=True,
    cpu_only=True,
    shows=("out", "merged"),
)

#: Every stage, in the order a run carries them out within an iteration.
STAGES: Final = (RESET, REDTEAM, RESPOND, JUDGE, PAIRS, TRAIN, EVALUATE, EXPORT)
BY_NAME: Final = {s.name: s for s in STAGES}
NAMES: Final = tuple(s.name for s in STAGES)
#: Stages of iteration k >= 1, in order.
LOOP: Final = tuple(s.name for s in STAGES if s.when in ("loop", "both"))


def get(name: str) -> StageDef:
    """The stage called `name`; `KeyError` with the known names otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage '{name}' (one of: {', '.join(NAMES)})") from None


def stages_of(k: int, *, reset: bool) -> tuple[str, ...]:
    """Stages of iteration k: the starting point (k = 0) is [reset] + evaluate."""
    if k >= 1:
        return LOOP
    return tuple(
        s.name for s in STAGES if s.when in ("start", "both") and (reset or not s.optional)
    )


def stages_of_run(
    iterations: int, *, reset: bool, export: bool = False
) -> Iterator[tuple[int, str]]:
    """Every (iteration, stage) of a run, in the order they run; with `export`, then the export
    of each iteration that may turn out to be the result (the planner runs just one)."""
    for k in range(iterations + 1):
        for stage in stages_of(k, reset=reset):
            yield k, stage
    if export:
        for k in range(iterations + 1):
            yield k, EXPORT.name
