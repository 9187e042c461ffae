"""What every stage shares: its context, its output, and the manifest that says it is done.

A stage is a function `run(ctx, out) -> summary`. It reads inputs through `ctx.store` (the run's
root in the artifact store) and writes every output through `out`, which records what was
written. `execute` makes stages idempotent: a stage whose `_manifest.json` exists is skipped; a
stage without one has its directory cleared and is redone from scratch, and the manifest
(counts, sha256 of each file, timings, versions) is written last, after every file it lists.

Under a multi-process launch (torchrun: the train and reset Jobs with `trainer.gpus > 1`) every
rank runs the stage but only rank 0 writes: the other ranks' `StageOutput` records nothing and
writes nothing, and rank 0 writes the manifest only after every rank has reached a barrier, so a
rank that dies leaves no manifest and the retried Job redoes the stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from selfmoa import __version__
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run import layout, verified
from selfmoa.store import Store
from selfmoa.store.base import json_bytes, jsonl_bytes
from selfmoa.training import distributed

if TYPE_CHECKING:
    from selfmoa.engines.provider import EngineProvider


class Progress(Protocol):
    """Progress of the work inside a stage: `(done, total, description)`."""

    def __call__(self, done: int, total: int, description: str = "") -> None: ...


def no_progress(done: int, total: int, description: str = "") -> None:
    return None


class StageError(RuntimeError):
    """A stage can't run (missing input, bad configuration): one clear line, no traceback."""


@dataclass
class StageContext:
    spec: AlignmentRunSpec
    #: The run's root in the artifact store (`<storage>/<namespace>/<run>/`).
    store: Store
    iteration: int
    #: Local scratch space (model downloads, adapters being trained).
    workdir: Path
    engines: EngineProvider
    #: The iteration whose adapter this stage starts from (the planner's decision).
    parent: int = 0
    progress: Progress = no_progress

    def adapter_key(self, k: int) -> str | None:
        """Store key of the adapter that iteration k ended with (None: the base model)."""
        return layout.adapter_key(k, reset=self.spec.safety_reset.enabled)

    def fetch_adapter(self, key: str | None) -> Path | None:
        """A local directory holding the adapter stored at `key` (downloaded once per workdir,
        every file checked against its stage's manifest)."""
        if key is None:
            return (self.spec.policy.adapter and Path(self.spec.policy.adapter)) or None
        local = self.store.local_path(key)
        if local is not None and local.is_dir():
            return local
        try:
            return verified.download(
                self.store, key, self.workdir / "adapters" / key.replace("/", "__")
            )
        except verified.Unverified as e:
            raise StageError(f"adapter {key}: {e}") from None

    def key(self, stage: str, name: str, iteration: int | None = None) -> str:
        k = self.iteration if iteration is None else iteration
        return layout.stage_file(k, stage, name)

    def require(self, stage: str, iteration: int | None = None) -> dict[str, Any]:
        """The manifest of an input stage; `StageError` when that stage has not finished."""
        k = self.iteration if iteration is None else iteration
        try:
            manifest: dict[str, Any] = self.store.read_json(layout.manifest_key(k, stage))
        except FileNotFoundError:
            raise StageError(
                f"input missing: stage '{stage}' of iteration {k} has not finished "
                f"(no {layout.manifest_key(k, stage)} in {self.store.uri})"
            ) from None
        return manifest

    def read_jsonl(
        self, stage: str, name: str, iteration: int | None = None
    ) -> list[dict[str, Any]]:
        self.require(stage, iteration)
        return self.store.read_jsonl(self.key(stage, name, iteration))


def read_jsonl_source(source: str, spec: AlignmentRunSpec, *, field: str) -> list[dict[str, Any]]:
    """Rows of a user-given JSONL file: a local path, `file://` or `s3://` (with the run's storage
    endpoint). A missing file or a bad line is one StageError naming the spec field."""
    try:
        if source.startswith(("s3://", "file://")):
            from selfmoa.store import open_store

            parent, _, name = source.rpartition("/")
            store = open_store(parent, endpoint=spec.storage.endpoint, region=spec.storage.region)
            data = store.read_bytes(name)
        else:
            data = Path(source).expanduser().read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise StageError(f"{field}: {source} not found") from None
    rows = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise StageError(f"{field}: {source} is not JSONL (line {n}: {e.msg})") from None
    return rows


@dataclass
class StageOutput:
    """Writes a stage's files under its directory and remembers them for the manifest.

    `writes=False` (a non-zero rank of a multi-process launch): every write is a no-op, so the
    stage's code stays the same on every rank.
    """

    store: Store
    prefix: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: bool = True

    def _record(self, name: str, data: bytes, rows: int | None = None) -> None:
        entry: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if rows is not None:
            entry["rows"] = rows
        self.files[name] = entry

    def write_bytes(self, name: str, data: bytes) -> None:
        if not self.writes:
            return
        self.store.write_bytes(f"{self.prefix}/{name}", data)
        self._record(name, data)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json_bytes(obj))

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        data, n = jsonl_bytes(rows)
        if self.writes:
            self.store.write_bytes(f"{self.prefix}/{name}", data)
            self._record(name, data, rows=n)
        return n

    def upload_dir(self, name: str, local: Path) -> None:
        # Only rank 0 saves the adapter: the other ranks have no directory to read.
        if not self.writes:
            return
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.write_bytes(f"{name}/{path.relative_to(local).as_posix()}", path.read_bytes())


StageFn = Callable[[StageContext, StageOutput], dict[str, Any]]


def versions() -> dict[str, str]:
    """Versions that matter for reproducing an artifact (only of modules already imported)."""
    import sys

    out = {"selfmoa": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "peft", "vllm"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def is_done(store: Store, iteration: int, stage: str) -> bool:
    return store.exists(layout.manifest_key(iteration, stage))


def execute(name: str, fn: StageFn, ctx: StageContext) -> tuple[dict[str, Any], bool]:
    """Run a stage unless its manifest exists. Returns (manifest, ran).

    In a multi-process launch only rank 0 clears, writes and writes the manifest (after a barrier
    of all ranks); the other ranks return the manifest they would have written.
    """
    mkey = layout.manifest_key(ctx.iteration, name)
    if ctx.store.exists(mkey):
        return ctx.store.read_json(mkey), False
    main = distributed.world().is_main
    prefix = layout.stage_dir(ctx.iteration, name)
    if main:
        # No manifest: whatever a previous attempt left is not trusted.
        ctx.store.delete_prefix(prefix + "/")
    else:
        ctx = dataclasses.replace(ctx, progress=no_progress)
    out = StageOutput(ctx.store, prefix, writes=main)
    started = time.time()
    summary = fn(ctx, out)
    # Every rank finished its part: a rank that died fails the barrier, and no manifest is written.
    distributed.barrier()
    finished = time.time()
    manifest = {
        "stage": name,
        "iteration": ctx.iteration,
        "files": out.files,
        "summary": summary,
        "started": started,
        "finished": finished,
        "seconds": round(finished - started, 3),
        "versions": versions(),
    }
    if main:
        ctx.store.write_json(mkey, manifest)
    return manifest, True
