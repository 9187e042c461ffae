"""Reading a run's progress back from the artifact store (the source of truth for both executors).

A stage is finished when its `_manifest.json` exists; an iteration's metrics are its evaluate
stage's `metrics.json`. Both executors build the planner's `Observed` from these reads, so a
restarted executor sees exactly what was done before it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run import layout, stage_table
from selfmoa.run.metrics import Metrics
from selfmoa.store import Store


def finished_stages(
    store: Store,
    spec: AlignmentRunSpec,
    known: frozenset[tuple[int, str]] | None = None,
) -> frozenset[tuple[int, str]]:
    """(iteration, stage) pairs whose manifest exists: one listing, not one request per stage.

    With `known`, what an earlier call found (a finished stage stays finished), only the stages
    that can have finished since are asked, one `exists` each: the loop's first unfinished stage
    (and the next while they keep being found). Stages run one after the other, so none after
    it can be done. A run that exports its result always lists: its export may follow any
    iteration."""
    order = list(
        stage_table.stages_of_run(
            spec.iterations, reset=spec.safety_reset.enabled, export=spec.output is not None
        )
    )
    if known is None or spec.output is not None:
        keys = set(store.list("iter-"))
        return frozenset(s for s in order if layout.manifest_key(*s) in keys)
    done = set(known)
    for s in order:
        if s in done:
            continue
        if not store.exists(layout.manifest_key(*s)):
            break
        done.add(s)
    return frozenset(done)


def read_metrics(
    store: Store,
    done: frozenset[tuple[int, str]],
    known: Mapping[int, Metrics] | None = None,
) -> dict[int, Metrics]:
    """Metrics of every iteration whose evaluate stage is finished; those in `known` are not
    read again (a finished stage never changes)."""
    known = known or {}
    out = {}
    for k, stage in sorted(done):
        if stage == "evaluate":
            out[k] = known.get(k) or Metrics.model_validate(
                store.read_json(layout.stage_file(k, "evaluate", layout.METRICS))
            )
    return out


def read_exported(store: Store, done: frozenset[tuple[int, str]]) -> str | None:
    """Where the export stage wrote the run's result, once it has."""
    for k, stage in sorted(done):
        if stage == stage_table.EXPORT.name:
            manifest = store.read_json(layout.manifest_key(k, stage))
            out = (manifest.get("summary") or {}).get("out")
            return str(out) if out else None
    return None
