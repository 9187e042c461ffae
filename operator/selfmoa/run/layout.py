"""Where things live in the artifact store; the one place that spells the paths.

<storage>/<namespace>/<run>/
  run.json
  iter-000/reset/adapter/...        optional safety reset (iteration 0 = the starting point)
  iter-000/evaluate/metrics.json    the starting point's metrics
  iter-00k/{redteam,respond,judge,pairs,train,evaluate}/...   k = 1..iterations
  report.html
"""

from __future__ import annotations

from typing import Final

MANIFEST: Final = "_manifest.json"
RUN_JSON: Final = "run.json"
REPORT: Final = "report.html"
STATUS: Final = "status.json"

PROMPTS: Final = "prompts.jsonl"
RESPONSES: Final = "responses.jsonl"
JUDGMENTS: Final = "judgments.jsonl"
PAIRS: Final = "pairs.jsonl"
GOLD_PAIRS: Final = "gold-pairs.jsonl"
ADAPTER: Final = "adapter"
CEILING_ADAPTER: Final = "ceiling-adapter"
METRICS: Final = "metrics.json"

#: Adapter delivery to served engines (engines/agent): serving/<model-slug>/adapters.json is the
#: desired set of adapters, serving/<model-slug>/replicas/<replica>.json what one replica loaded.
SERVING: Final = "serving"
DESIRED_ADAPTERS: Final = "adapters.json"
REPLICAS: Final = "replicas"


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


def adapter_stage(k: int, *, reset: bool) -> str | None:
    """The stage that wrote the adapter iteration k ended with: train (k >= 1), the safety
    reset (k = 0 with a reset), or none (the base model, or the user's starting adapter)."""
    if k >= 1:
        return "train"
    return "reset" if reset else None


def adapter_key(k: int, *, reset: bool) -> str | None:
    """Store key of the adapter iteration k ended with (None: no adapter of the run's)."""
    stage = adapter_stage(k, reset=reset)
    return None if stage is None else stage_file(k, stage, ADAPTER)


def run_uri(storage_uri: str, namespace: str, name: str) -> str:
    """The run's root URI: `<storage>/<namespace>/<run>`."""
    return f"{storage_uri.rstrip('/')}/{run_prefix(namespace, name)}"
