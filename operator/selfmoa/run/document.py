"""run.json: the spec snapshot a run's stages read when they are given no spec.

Written once per run by whichever executor starts it; a later start with a different spec (other
than the fields a user may change to extend or stop a run) is refused, so one run directory never
mixes two specs.
"""

from __future__ import annotations

from typing import Any

from selfmoa import __version__
from selfmoa.api.errors import SpecError
from selfmoa.api.spec import AlignmentRun
from selfmoa.run import layout
from selfmoa.store import Store

#: Spec fields a user may change when re-running an existing run (to extend or stop it).
MUTABLE_FIELDS = {"iterations", "stopWhen", "suspend"}


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
    wire = run.spec.wire()
    if store.exists(layout.RUN_JSON):
        saved = store.read_json(layout.RUN_JSON).get("spec", {})
        changed = sorted(
            k
            for k in set(saved) | set(wire)
            if saved.get(k) != wire.get(k) and k not in MUTABLE_FIELDS
        )
        if changed:
            raise SpecError(
                f"spec.{changed[0]}: differs from the existing run at {store.uri} "
                "(use another metadata.name or --store to start a new run)"
            )
    store.write_json(layout.RUN_JSON, run_document(run))
