"""`export_run`: the chosen iteration of a run, out as an adapter or a merged model with its card.

Called by `selfmoa export`, and meant for the operator's optional export Job and `selfmoa run`:
it prints nothing itself (progress goes to the `progress` callback) and ends early only with
`ExportError` (bad input) or `ExportFailed` (the export could not be completed), one line each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec
from selfmoa.export.card import base_license, model_card
from selfmoa.export.errors import ExportError, ExportFailed
from selfmoa.export.source import Choice, RunSource, Say, choose, fetch_adapter, open_run
from selfmoa.export.write import (
    discard,
    open_target,
    write_adapter,
    write_manifest,
    write_merged,
)
from selfmoa.store import StoreError
from selfmoa.store.scratch import make_scratch, sweep_stale

_SCRATCH = "selfmoa-export-"


@dataclass(frozen=True)
class ExportResult:
    #: The exported iteration (0: the starting point).
    iteration: int
    #: Where the export is: a local folder or an s3:// URI.
    out: str
    #: A merged full model (True) or a LoRA adapter (False).
    merged: bool
    #: Why this iteration: the gate's best accepted one, or the one asked for.
    why: str
    #: The adapter's URI in the run's store; None when iteration 0 is the base model itself.
    adapter: str | None = None


def _quiet(message: str) -> None:
    return None


def _base_dir(spec: AlignmentRunSpec, say: Say) -> Path:
    """The policy's base model on this machine (built for the tiny profile, downloaded from an
    s3:// URI); a hub id stays an id that transformers resolves itself."""
    from selfmoa.engines.provider import EngineProvider

    try:
        return EngineProvider(spec).model_path(spec.policy.model, progress=say)
    except StoreError as e:
        raise ExportFailed(f"cannot fetch the base model {spec.policy.model}: {e}") from None


def _local_base(spec: AlignmentRunSpec) -> Path | None:
    """The base's folder when the policy names one on this machine (nothing is built or fetched
    just to read a license)."""
    model = spec.policy.model
    if model == TINY_MODEL or "://" in model:
        return None
    p = Path(model).expanduser()
    return p if p.is_dir() else None


def export_run(
    run_uri: str,
    out: str,
    *,
    merge: bool = False,
    iteration: int | None = None,
    force: bool = False,
    endpoint: str | None = None,
    region: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export iteration `iteration` (None: the gate's best accepted one) of the run at `run_uri`
    into `out` (a folder, `file://` or `s3://` prefix): the LoRA adapter, or with `merge` the
    base with the adapter merged in, each with a model card and a `_manifest.json`.

    `endpoint`/`region` are the S3 settings of both the run and `out` (the output falls back to
    the run's `spec.storage`). An existing non-empty `out` is replaced only with `force`.
    """
    say = progress or _quiet
    src = open_run(run_uri, endpoint=endpoint, region=region)
    choice = choose(src, iteration)
    spec = src.spec
    if choice.stage is None and not merge:
        raise ExportError(
            "iteration 0 is the base model itself: there is no adapter to export "
            "(add --merge to export the base model as it is)"
        )
    target = open_target(
        out,
        force=force,
        endpoint=endpoint or spec.storage.endpoint,
        region=region or spec.storage.region,
        run_uri=src.uri,
    )
    sweep_stale(None, _SCRATCH)
    scratch = make_scratch(prefix=_SCRATCH)
    staging: Path | None = None
    try:
        adapter_dir: Path | None = None
        shas: dict[str, str] = {}
        if choice.stage is not None:
            adapter_dir = scratch / "adapter"
            shas = fetch_adapter(src, choice, adapter_dir, say)
        staging = target.staging(scratch)
        base_dir = _write_model(spec, adapter_dir, staging, merge=merge, say=say)
        _write_card(src, choice, staging, base_dir, shas, merge=merge)
        adapter_uri = _write_export_manifest(src, choice, staging, shas, merge=merge)
        target.commit(staging, say)
        staging = None
    finally:
        discard(staging)
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportResult(
        iteration=choice.iteration,
        out=target.uri,
        merged=merge,
        why=choice.why,
        adapter=adapter_uri,
    )


def _write_model(
    spec: AlignmentRunSpec, adapter_dir: Path | None, staging: Path, *, merge: bool, say: Say
) -> Path | None:
    """Write the merged model or the adapter into `staging`; the base's folder on this machine,
    if any (where its license is read)."""
    base_dir = _local_base(spec)
    if merge:
        base_dir = _base_dir(spec, say)
        write_merged(base_dir, adapter_dir, staging, say=say, revision=spec.policy.revision)
    else:
        assert adapter_dir is not None
        say("writing the adapter")
        write_adapter(
            adapter_dir,
            staging,
            base_model=spec.policy.model,
            revision=spec.policy.revision,
        )
    return base_dir


def _write_card(
    src: RunSource,
    choice: Choice,
    staging: Path,
    base_dir: Path | None,
    shas: dict[str, str],
    *,
    merge: bool,
) -> None:
    """The model card (README.md), with the base's license when its card is on this machine."""
    spec = src.spec
    license_meta = base_license(
        spec.policy.model,
        base_dir if base_dir is not None and base_dir.is_dir() else None,
        spec.policy.revision,
    )
    card = model_card(src, choice, merged=merge, license_meta=license_meta, adapter_sha256=shas)
    (staging / "README.md").write_text(card, encoding="utf-8")


def _write_export_manifest(
    src: RunSource, choice: Choice, staging: Path, shas: dict[str, str], *, merge: bool
) -> str | None:
    """The export's `_manifest.json`; the adapter's URI in the run's store (None: no adapter)."""
    adapter_uri = f"{src.uri}/{choice.adapter_key}" if choice.adapter_key else None
    write_manifest(
        staging,
        {
            "kind": "selfmoa-export",
            "run": src.uri,
            "iteration": choice.iteration,
            "merged": merge,
            "why": choice.why,
            "base_model": src.spec.policy.model,
            "adapter": adapter_uri,
            "adapter_sha256": shas,
        },
    )
    return adapter_uri
