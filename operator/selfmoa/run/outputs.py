"""The files at a run's root that people read: `status.json` and `report.html`.

Both executors write them from what they observed (the local loop after every stage; the
operator when a stage finishes or the run ends), so a run in a bucket explains itself without
the cluster that ran it.
"""

from __future__ import annotations

from collections.abc import Mapping

from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus
from selfmoa.run import layout, planner
from selfmoa.run.metrics import Metrics
from selfmoa.store import Store


def write_status(store: Store, status: AlignmentRunStatus) -> None:
    store.write_json(layout.STATUS, status.model_dump(mode="json", by_alias=True))


def write_report(
    store: Store,
    spec: AlignmentRunSpec,
    metrics: Mapping[int, Metrics],
    stage_seconds: Mapping[str, float],
) -> None:
    from selfmoa.run.report import render_report

    g = planner.gate(spec, metrics)
    html = render_report(
        title=f"Self-MOA run {store.uri.rstrip('/').rsplit('/', 1)[-1]}",
        metrics=dict(metrics),
        stage_seconds=dict(stage_seconds),
        accepted={0: True, **g.accepted},
        spec_summary={
            "policy": spec.policy.model,
            "iterations": spec.iterations,
            "judges": ", ".join(
                f"{j.name} ({j.objective.value}, {j.kind.value})" for j in spec.judges
            ),
            "ensemble": spec.ensemble.method.value,
            "pairs": spec.preferences.strategy.value,
            "loss": spec.training.loss.value,
        },
    )
    store.write_bytes(layout.REPORT, html.encode())


def stage_seconds(
    store: Store, done: frozenset[tuple[int, str]], known: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Wall time of every finished stage, from its manifest; those in `known` are not read
    again (a finished stage's manifest never changes)."""
    known = known or {}
    out = {}
    for k, stage in sorted(done):
        key = f"{layout.iteration_dir(k)}/{stage}"
        if key in known:
            out[key] = known[key]
        else:
            manifest = store.read_json(layout.manifest_key(k, stage))
            out[key] = float(manifest.get("seconds", 0.0))
    return out
