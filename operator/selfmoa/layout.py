"""Where things live in the artifact store (DESIGN §4); the one place that spells the paths.

<storage>/<namespace>/<run>/
  run.json
  iter-000/reset/adapter/...        optional safety reset (iteration 0 = the starting point)
  iter-000/evaluate/metrics.json    the starting point's metrics
  iter-00k/{redteam,respond,judge,pairs,train,evaluate}/...   k = 1..iterations
  report.html
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

MANIFEST: Final = "_manifest.json"
RUN_JSON: Final = "run.json"
REPORT: Final = "report.html"

#: Stages of iteration k >= 1, in order.
LOOP_STAGES: Final = ("redteam", "respond", "judge", "pairs", "train", "evaluate")
#: Every stage name the worker knows.
ALL_STAGES: Final = ("reset", *LOOP_STAGES)

PROMPTS: Final = "prompts.jsonl"
RESPONSES: Final = "responses.jsonl"
JUDGMENTS: Final = "judgments.jsonl"
PAIRS: Final = "pairs.jsonl"
GOLD_PAIRS: Final = "gold-pairs.jsonl"
ADAPTER: Final = "adapter"
CEILING_ADAPTER: Final = "ceiling-adapter"
METRICS: Final = "metrics.json"


def run_prefix(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def iteration_dir(k: int) -> str:
    return f"iter-{k:03d}"


def stage_dir(k: int, stage: str) -> str:
    return f"{iteration_dir(k)}/{stage}"


def manifest_key(k: int, stage: str) -> str:
    return f"{stage_dir(k, stage)}/{MANIFEST}"


def stage_file(k: int, stage: str, name: str) -> str:
    return f"{stage_dir(k, stage)}/{name}"


def run_stages(iterations: int, *, reset: bool) -> Iterator[tuple[int, str]]:
    """Every (iteration, stage) of a run, in the order they run."""
    for k in range(iterations + 1):
        for stage in stages_of(k, reset=reset):
            yield k, stage


def stages_of(k: int, *, reset: bool) -> tuple[str, ...]:
    """Stages of iteration k: the starting point (k=0) is [reset] + evaluate."""
    if k == 0:
        return ("reset", "evaluate") if reset else ("evaluate",)
    return LOOP_STAGES


def run_uri(storage_uri: str, namespace: str, name: str) -> str:
    """The run's root URI: `<storage>/<namespace>/<run>`."""
    return f"{storage_uri.rstrip('/')}/{run_prefix(namespace, name)}"
