"""Prometheus metrics of the operator (served by `--metrics-port`)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

RUNS = Gauge("selfmoa_runs", "AlignmentRuns known to this operator, by phase.", ["phase"])
STAGE_SECONDS = Histogram(
    "selfmoa_stage_duration_seconds",
    "Wall time of finished stage Jobs (start to completion).",
    ["stage"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
RECONCILE_ERRORS = Counter(
    "selfmoa_reconcile_errors_total", "Reconciles that raised (they are retried).", ["reason"]
)
RECONCILES = Counter("selfmoa_reconciles_total", "Reconciles run.")
JOBS_CREATED = Counter("selfmoa_stage_jobs_created_total", "Stage Jobs created.", ["stage"])

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


def publish_phases(phases: Mapping[tuple[str, str], str]) -> None:
    """Set the per-phase gauge from the operator's view of every run."""
    counts = dict.fromkeys(PHASES, 0)
    for phase in phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        RUNS.labels(phase=phase).set(n)
