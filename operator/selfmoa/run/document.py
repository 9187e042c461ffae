"""run.json: the spec snapshot a run's stages read when they are given no spec.

Written once per run by whichever executor starts it; a later start with a different spec (other
than the fields a user may change to extend or stop a run) is refused, so one run directory never
mixes two specs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError

from selfmoa import __version__
from selfmoa.api.errors import SpecError
from selfmoa.api.spec import AlignmentRun, AlignmentRunSpec
from selfmoa.run import layout
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


def run_document(run: AlignmentRun) -> dict[str, Any]:
    return {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "metadata": {"name": run.name, "namespace": run.namespace},
        "spec": run.spec.wire(),
        "selfmoa": __version__,
    }


def ensure_run_json(store: Store, run: AlignmentRun) -> None:
    """Write the spec snapshot; refuse to mix two different specs in one run directory."""
    if store.exists(layout.RUN_JSON):
        changed = fixed_fields_changed(store.read_json(layout.RUN_JSON), run)
        if changed:
            raise SpecError(
                f"spec.{changed[0]}: differs from the existing run at {store.uri} "
                "(use another metadata.name or --store to start a new run)"
            )
    store.write_json(layout.RUN_JSON, run_document(run))


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
