"""run.json: the spec snapshot a run's stages read when they are given no spec, and its owner.

Written by whichever executor starts the run, with the owner's uid (none for a local run) and
start time; a later start with a different spec (other than the fields a user may change to
extend or stop a run) is refused, so one run directory never mixes two specs, and a new owner
finding an earlier run's stages reuses them visibly or starts fresh (`selfmoa.run.identity`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError

from selfmoa import __version__
from selfmoa.api.loader import SpecError
from selfmoa.api.spec import AlignmentRun, AlignmentRunSpec
from selfmoa.run import layout
from selfmoa.run.identity import TakeOver, take_over
from selfmoa.run.planner import Reuse
from selfmoa.run.state import finished_stages
from selfmoa.store import Store

#: Spec fields a user may change in a started run: extend or stop it, pause it, or change where
#: and how big its pods are. Everything else (the policy, the data, the judges, the objective,
#: the storage) defines what the run's artifacts mean and is fixed once the run has started.
MUTABLE_FIELDS = {
    "iterations",
    "stopWhen",
    "suspend",
    "serving",
    "trainer",
    "queueName",
    # Where hub models are read from, not which: the cache is keyed by repo and revision.
    "modelCache",
}


def run_document(
    run: AlignmentRun,
    *,
    uid: str | None = None,
    started: str | None = None,
    reused: Reuse | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": run.name, "namespace": run.namespace}
    if uid:
        meta["uid"] = uid
    doc: dict[str, Any] = {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "metadata": meta,
        "spec": run.spec.wire(),
        "selfmoa": __version__,
    }
    if started:
        doc["started"] = started
    if reused is not None:
        doc["reused"] = {"stages": reused.stages, "source": reused.source}
    return doc


def adopt(
    store: Store, run: AlignmentRun, *, uid: str | None, fresh: bool, now: str
) -> tuple[TakeOver, dict[str, Any] | None]:
    """Decide what a starting run does with its store path (see `identity.take_over`) and do it:
    delete an earlier run's files for a fresh start, then write run.json. Returns the decision
    and the run.json now in the store (None when refused: nothing was written)."""
    try:
        saved: dict[str, Any] | None = store.read_json(layout.RUN_JSON)
    except FileNotFoundError:
        saved = None
    finished = len(finished_stages(store, run.spec)) if saved is not None else 0
    changed = fixed_fields_changed(saved, run) if saved is not None else []
    decision = take_over(saved, uid=uid, finished=finished, changed=changed, fresh=fresh)
    if decision.decision == "refuse":
        return decision, None
    if decision.decision == "fresh":
        deleted = store.delete_prefix("")
        decision = TakeOver("fresh", f"{decision.message}: {deleted} file(s) deleted")
    started = (saved or {}).get("started") if decision.decision == "resume" else None
    doc = run_document(run, uid=uid, started=started or now, reused=decision.reuse)
    store.write_json(layout.RUN_JSON, doc)
    return decision, doc


def ensure_run_json(
    store: Store, run: AlignmentRun, *, fresh: bool = False, now: str = ""
) -> TakeOver:
    """`adopt` for a local run: a refusal is bad input (one line naming the field)."""
    decision, _ = adopt(store, run, uid=None, fresh=fresh, now=now)
    if decision.decision == "refuse":
        raise SpecError(f"{decision.message} (store {store.uri})")
    return decision


def fixed_fields_changed(saved_document: dict[str, Any], run: AlignmentRun) -> list[str]:
    """Top-level spec fields outside `MUTABLE_FIELDS` that differ from the saved run.json.

    The saved spec is read through today's model first, so a field added since (with a default)
    is not taken for an edit of a run started before it existed."""
    saved, wire = saved_document.get("spec", {}), run.spec.wire()
    # When it no longer validates, compare as written: whatever differs is reported by name.
    with contextlib.suppress(ValidationError):
        saved = AlignmentRunSpec.model_validate(saved).wire()
    return sorted(
        k for k in set(saved) | set(wire) if saved.get(k) != wire.get(k) and k not in MUTABLE_FIELDS
    )
