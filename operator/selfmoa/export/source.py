"""Reading the result out of a run: its spec, its metrics, the chosen iteration and its adapter.

The run's own store is the only source: run.json for the spec, each evaluate stage's metrics for
the gate, and the train (or reset) stage's manifest for the sha256 of every adapter file. An
adapter file that doesn't hash to what its stage recorded is refused: it was changed after the
stage finished, and nothing says what it holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from selfmoa.api.loader import SpecError, parse_run
from selfmoa.api.spec import AlignmentRun, AlignmentRunSpec
from selfmoa.export.errors import ExportError, ExportFailed
from selfmoa.run import layout, planner, verified
from selfmoa.run import state as run_state
from selfmoa.run.metrics import Metrics
from selfmoa.store import Store, StoreError, open_store

Say = Callable[[str], None]


def store_uri(value: str, what: str) -> str:
    """`file://…` and `s3://…` as given, a bare path as `file://ABS`; any other scheme refused."""
    if not value.strip():
        raise ExportError(f"{what}: empty")
    if value.startswith(("file://", "s3://")):
        return value
    if "://" in value:
        raise ExportError(f"{what}: unsupported scheme in {value!r} (use file://, s3:// or a path)")
    return f"file://{Path(value).expanduser().absolute()}"


@dataclass(frozen=True)
class RunSource:
    """What export reads from a run."""

    uri: str
    store: Store
    run: AlignmentRun
    metrics: dict[int, Metrics]
    gate: planner.Gate

    @property
    def spec(self) -> AlignmentRunSpec:
        return self.run.spec


def open_run(run_uri: str, *, endpoint: str | None = None, region: str | None = None) -> RunSource:
    """The run at `run_uri` with its evaluated iterations; `ExportError` when there is none."""
    uri = store_uri(run_uri, "RUN_URI")
    try:
        store = open_store(uri, endpoint=endpoint, region=region)
        try:
            doc = store.read_json(layout.RUN_JSON)
        except FileNotFoundError:
            raise ExportError(
                f"{store.uri}: no {layout.RUN_JSON} (not the root of a run: "
                "<storage>/<namespace>/<run>)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExportError(f"{store.uri}/{layout.RUN_JSON}: not valid JSON ({e})") from None
        try:
            run = parse_run(doc)
        except SpecError as e:
            raise ExportError(f"{store.uri}/{layout.RUN_JSON}: {e}") from None
        done = run_state.finished_stages(store, run.spec)
        try:
            metrics = run_state.read_metrics(store, done)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ExportError(
                f"{store.uri}: an iteration's {layout.METRICS} is not valid ({where}: {err['msg']})"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExportError(
                f"{store.uri}: an iteration's {layout.METRICS} is not valid JSON ({e})"
            ) from None
    except StoreError as e:
        raise ExportError(str(e)) from None
    if not metrics:
        raise ExportError(f"{store.uri}: no iteration has been evaluated yet; nothing to export")
    return RunSource(
        uri=store.uri,
        store=store,
        run=run,
        metrics=metrics,
        gate=planner.gate(run.spec, metrics),
    )


@dataclass(frozen=True)
class Choice:
    """The iteration to export, why, and where its adapter lives (None: the base model)."""

    iteration: int
    why: str
    #: Stage that wrote the adapter ("train", or "reset" for iteration 0), None for the base.
    stage: str | None

    @property
    def adapter_key(self) -> str | None:
        return layout.adapter_key(self.iteration, reset=self.stage == "reset")


def choose(src: RunSource, iteration: int | None) -> Choice:
    """The gate's best accepted iteration, or the one asked for (which must be evaluated)."""
    g, metrics = src.gate, src.metrics
    if iteration is None:
        k = g.best
        result = planner.result_of(g, metrics)
        # The same words as the run's status.result, so the card and the status agree.
        why = result.why if result is not None else f"the best iteration is {k}"
    else:
        if iteration < 0:
            raise ExportError(f"--iteration: must be 0 or more, not {iteration}")
        if iteration not in metrics:
            done = ", ".join(str(i) for i in sorted(metrics))
            raise ExportError(
                f"--iteration: iteration {iteration} has not been evaluated (evaluated: {done})"
            )
        k = iteration
        why = f"chosen with --iteration {k}"
        if g.accepted.get(k) is False:
            why += " (the gate rejected it: it was rolled back)"
        if k != g.best:
            why += f"; the gate's best accepted iteration is {g.best}"
    stage = layout.adapter_stage(k, reset=src.spec.safety_reset.enabled)
    if stage is not None:
        return Choice(k, why, stage)
    if src.spec.policy.adapter:
        raise ExportError(
            f"iteration 0 is the starting point you gave (policy.adapter {src.spec.policy.adapter}); "
            "this run trained nothing into it, so there is nothing of the run's to export"
        )
    return Choice(0, why + "; iteration 0 is the base model itself (no adapter)", None)


def fetch_adapter(src: RunSource, choice: Choice, dest: Path, say: Say) -> dict[str, str]:
    """Copy the chosen adapter's files into `dest`, each checked against its stage's manifest;
    the sha256 of each file (by name inside the adapter)."""
    key = choice.adapter_key
    assert key is not None and choice.stage is not None
    shas: dict[str, str] = {}
    try:
        mkey, listed = verified.listing(src.store, key)
        say(f"verifying the adapter of iteration {choice.iteration} ({len(listed)} files)")
        dest.mkdir(parents=True, exist_ok=True)
        for rel, data, sha in verified.read_listed(src.store, key, mkey, listed):
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            shas[rel] = sha
    except verified.Unverified as e:
        raise ExportFailed(f"{e}; refusing to export it") from None
    except StoreError as e:
        raise ExportFailed(str(e)) from e  # the cause says whether it was an outage (exit 75)
    return shas
