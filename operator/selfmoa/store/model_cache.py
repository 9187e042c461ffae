"""Models materialized once and reused: by every stage of a run, on every node.

A stage Pod starts with an empty disk. Without a shared copy, each one would rebuild the tiny base
(~90 s) or download the policy and judges from the hub again (gigabytes, per stage, per
iteration). Here a model is identified by a *key* that names its content (the tiny builder's
hash of its inputs, or a hub repo at a revision); the first user builds or downloads it and
publishes it into the run's store under `models/<key>/`; everyone after fetches it from there.

Publishing follows the stages' rule: files first, `_manifest.json` last, and each publisher's
files go under their own build id (`models/<key>/<build-id>/...`) that the manifest names. Two
Pods that build the same model at once both publish whole copies; whichever manifest lands last
wins, and it always names a complete set of files, so a reader never mixes two builds. Fetched
files are checked against the manifest's sha256s before use.

On one machine, a lock file serializes processes that share a cache directory, and a finished
model directory appears by rename only, with a marker written inside it before.

A *seeded* cache (`spec.modelCache`, a volume every pod mounts read-only) has the same layout:
`<root>/models/<key>/` with the marker. `selfmoa fetch --hub REPO DIR` writes it
(through `materialize`, so a killed seed never leaves a complete-looking directory); pods only
read it (`seeded`), so concurrent first uses can't corrupt it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfmoa.api import stage_container
from selfmoa.api.base import TINY_MODEL, is_gguf_model
from selfmoa.store.base import Store, StoreError

MODELS = "models"
MANIFEST = "_manifest.json"
#: Written inside a local model directory once it is complete.
COMPLETE = ".selfmoa-complete"

#: Builds (or downloads) a model into the given empty directory; gets a progress callback.
Build = Callable[[Path, Callable[[str], None]], None]


def _quiet(_: str) -> None:
    return None


def manifest_key(key: str) -> str:
    return f"{MODELS}/{key}/{MANIFEST}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != COMPLETE)


def materialize(
    key: str,
    build: Build,
    *,
    cache_dir: Path,
    shared: Store | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The local directory of model `key`: from the local cache, else fetched from `shared`,
    else built once by `build` (and published to `shared` for everyone after)."""
    say = progress or _quiet
    final = Path(cache_dir) / MODELS / key
    if (final / COMPLETE).exists():
        return final
    with _locked(Path(cache_dir) / MODELS / f".{key}.lock"):
        if (final / COMPLETE).exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            if shared is not None and shared.exists(manifest_key(key)):
                say(f"model {key}: fetching from {shared.uri}/{MODELS}/{key}")
                fetch(shared, key, tmp)
            else:
                started = time.monotonic()
                say(f"model {key}: not in the shared cache; building it")
                build(tmp, say)
                if shared is not None:
                    publish(shared, key, tmp)
                    say(
                        f"model {key}: built and shared in {time.monotonic() - started:.0f}s "
                        f"({shared.uri}/{MODELS}/{key})"
                    )
            (tmp / COMPLETE).write_text(key)
            _install(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`, unless another writer got there first.

    The lock serializes writers on one machine only (flock is advisory, and not reliable on
    every network filesystem): a writer on another node sharing a seeded volume may finish in
    between. Its complete copy is kept, since readers may hold it open."""
    if (final / COMPLETE).exists():
        return
    if final.exists():  # incomplete (its marker gone): never a copy a reader was given
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / COMPLETE).exists():
            raise


class ModelCacheMiss(StoreError):
    """A model the seeded model cache volume should hold, but does not."""


def seeded(root: Path, key: str) -> Path | None:
    """Model `key` in a seeded (read-only) cache at `root`, when it is there complete."""
    path = Path(root) / MODELS / key
    return path if (path / COMPLETE).is_file() else None


def publish(shared: Store, key: str, local: Path) -> dict[str, Any]:
    """Upload `local` under a fresh build id, then the manifest naming it (last)."""
    build_id = uuid.uuid4().hex[:12]
    files: dict[str, dict[str, Any]] = {}
    for path in _files(local):
        data = path.read_bytes()
        name = path.relative_to(local).as_posix()
        shared.write_bytes(f"{MODELS}/{key}/{build_id}/{name}", data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"key": key, "build": build_id, "files": files, "published": time.time()}
    shared.write_json(manifest_key(key), manifest)
    return manifest


def fetch(shared: Store, key: str, dest: Path) -> dict[str, Any]:
    """Download the published copy of `key` into `dest`, checking every file's sha256."""
    manifest: dict[str, Any] = shared.read_json(manifest_key(key))
    build_id = manifest["build"]
    for name, entry in sorted(manifest["files"].items()):
        data = shared.read_bytes(f"{MODELS}/{key}/{build_id}/{name}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreError(
                f"{shared.uri}/{MODELS}/{key}/{build_id}/{name}: sha256 differs from the "
                "model's manifest (a corrupted or tampered copy); delete "
                f"{MODELS}/{key}/ from the store to rebuild it"
            )
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return manifest


#: A policy (or judge) given as `hf://ORG/NAME[@REVISION]` is always snapshotted into the store.
HUB_PREFIX = "hf://"


def is_hub_model(model: str) -> bool:
    """`hf://ORG/NAME[@REV]` or `ORG/NAME`: a model that comes from the hub (the tiny one is built)."""
    return (
        model != TINY_MODEL
        and not is_gguf_model(model)
        and (model.startswith(HUB_PREFIX) or looks_like_hub_id(model))
    )


def looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return (
        len(parts) == 2 and all(parts) and "://" not in model and not model.startswith((".", "~"))
    )


def parse_hub_model(model: str, revision: str | None = None) -> tuple[str, str]:
    """(repo id, revision) of `hf://org/name@rev` or `org/name` (revision default: main)."""
    repo = model.removeprefix(HUB_PREFIX)
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return repo, revision or "main"


def hub_key(repo: str, revision: str) -> str:
    """The model cache key of a hub snapshot: readable, and unique per repo and revision."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")[:48]
    digest = hashlib.sha256(f"{repo}@{revision}".encode()).hexdigest()[:8]
    return f"hf-{slug}-{digest}"


def materialize_hub(
    repo: str,
    revision: str,
    *,
    cache_dir: Path,
    shared: Store | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """A hub repo at a revision, downloaded once (into `shared` for everyone after)."""

    def download(dest: Path, say: Callable[[str], None]) -> None:
        from huggingface_hub import snapshot_download

        say(f"downloading {repo}@{revision} from the hub (once)")
        snapshot_download(repo_id=repo, revision=revision, local_dir=str(dest))

    return materialize(
        hub_key(repo, revision), download, cache_dir=cache_dir, shared=shared, progress=progress
    )


def seed_command(repo: str, revision: str, root: str) -> str:
    """The command that puts a hub model into a model cache volume mounted at `root`."""
    return " ".join([*stage_container.FETCH_COMMAND, "--hub", repo, "--revision", revision, root])


#: Where the volume is mounted read-write in the seeding pod that error messages suggest.
SEED_MOUNT = "/cache"


def seeded_hub(
    repo: str,
    revision: str,
    root: Path,
    *,
    claim: str | None = None,
    sub_path: str | None = None,
) -> Path:
    """A hub model from the seeded model cache volume at `root`; `ModelCacheMiss` (one line
    naming the command that seeds it) when it is not there."""
    key = hub_key(repo, revision)
    found = seeded(root, key)
    if found is not None:
        return found
    where = f"PVC {claim} (spec.modelCache)" if claim else f"the model cache at {root}"
    dest = f"{SEED_MOUNT}/{sub_path}" if sub_path else SEED_MOUNT
    raise ModelCacheMiss(
        f"{repo}@{revision} is not in {where}: no complete {MODELS}/{key}/ there, and hub "
        "models are read from it, never downloaded. Seed it once from a pod that mounts the "
        f"claim read-write at {SEED_MOUNT}: {seed_command(repo, revision, dest)} "
        "(manifests/examples/model-cache-seed.yaml)"
    )
