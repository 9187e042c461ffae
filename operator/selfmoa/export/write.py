"""Writing an export: the adapter or the merged model in Hugging Face layout, its manifest, and
putting the finished folder where it was asked for, whole or not at all.

Everything is written into a staging folder first; `_manifest.json` (sha256 of every file) is
written last, and the folder only then becomes `--out`: by one rename on disk, or, on S3, by
uploading every file and the manifest after them, so an interrupted upload leaves objects without
a manifest, never a manifest over half a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from selfmoa import __version__
from selfmoa.export.errors import ExportError, ExportFailed
from selfmoa.run import layout
from selfmoa.store import Store, StoreError, open_store
from selfmoa.store.base import json_bytes
from selfmoa.store.scratch import OWNER_FILE, owner_token, sweep_stale

Say = Callable[[str], None]
ADAPTER_CONFIG = "adapter_config.json"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


# ------------------------------------------------------------------ what goes into the folder


def write_adapter(
    adapter_dir: Path, dest: Path, *, base_model: str, revision: str | None = None
) -> None:
    """The verified adapter files, with the config naming the policy's model id as its base
    (training wrote the path of the base on the machine that trained it)."""
    for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
        target = dest / path.relative_to(adapter_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    config_path = dest / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ExportFailed(
            f"the adapter's {ADAPTER_CONFIG} is unreadable: {_one_line(e)}"
        ) from None
    if not isinstance(config, dict):
        raise ExportFailed(f"the adapter's {ADAPTER_CONFIG} is not a JSON object")
    config["base_model_name_or_path"] = base_model
    if revision:
        config["revision"] = revision
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_merged(
    base: Path,
    adapter_dir: Path | None,
    dest: Path,
    *,
    say: Say,
    revision: str | None = None,
) -> None:
    """The base with the adapter merged into its weights (`merge_and_unload`), in the base's own
    dtype, and the base's tokenizer; no adapter: the base as it is."""
    import torch
    from transformers import AutoModelForCausalLM

    from selfmoa.models.chat import load_tokenizer

    kwargs: dict[str, Any] = {"dtype": "auto"}
    if revision and not base.is_dir():
        kwargs["revision"] = revision
    say(f"loading the base model {base}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
        tokenizer = load_tokenizer(base)
    except (OSError, ValueError) as e:
        raise ExportFailed(f"cannot load the base model {base}: {_one_line(e)}") from None
    if adapter_dir is not None:
        from peft import PeftModel

        say("applying the adapter and merging it into the weights")
        try:
            with torch.no_grad():
                peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
                model = peft_model.merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ExportFailed(
                f"the adapter does not apply to the base model {base}: {_one_line(e)}"
            ) from None
    say(f"saving the merged model into {dest}")
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_files(folder: Path) -> list[Path]:
    """The files of an export, in upload order (the manifest is not one of them)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != OWNER_FILE
        and p.relative_to(folder).as_posix() != layout.MANIFEST
    )


def versions() -> dict[str, str]:
    out = {"selfmoa": __version__, "python": sys.version.split()[0]}
    for mod in ("torch", "transformers", "peft"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def write_manifest(folder: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """`_manifest.json`, last: sha256 and size of every file of the export."""
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in output_files(folder)
    }
    manifest = {**info, "files": files, "created": time.time(), "versions": versions()}
    (folder / layout.MANIFEST).write_bytes(json_bytes(manifest))
    return manifest


# ------------------------------------------------------------------ where the folder goes


class Target(Protocol):
    """Where a finished export goes."""

    uri: str

    def staging(self, scratch: Path) -> Path:
        """An empty folder to write the export into."""

    def commit(self, staging: Path, say: Say) -> None:
        """Make the staged folder the output (the staging folder is gone afterwards)."""


class LocalTarget:
    """A folder on this machine: staged in a hidden sibling, renamed into place."""

    def __init__(self, path: Path, *, force: bool) -> None:
        self.path = path.expanduser().absolute()
        self.uri = f"file://{self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise ExportError(f"--out {self.path}: is a file, not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not force:
            raise ExportError(
                f"--out {self.path}: exists and is not empty (use --force to replace it)"
            )

    def staging(self, scratch: Path) -> Path:
        parent, name = self.path.parent, self.path.name
        try:
            parent.mkdir(parents=True, exist_ok=True)
            # Siblings left by a killed export of the same folder (their process is gone).
            sweep_stale(parent, f".{name}.partial-")
            tmp = parent / f".{name}.partial-{owner_token()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / OWNER_FILE).write_text(owner_token() + "\n")
        except OSError as e:
            raise ExportError(f"--out {self.path}: {e.strerror or _one_line(e)}") from None
        return tmp

    def commit(self, staging: Path, say: Say) -> None:
        (staging / OWNER_FILE).unlink(missing_ok=True)
        old = self.path.parent / f".{self.path.name}.old-{owner_token()}"
        try:
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(staging, self.path)
        except OSError as e:
            if old.exists() and not self.path.exists():
                os.replace(old, self.path)  # put the previous export back
            raise ExportFailed(f"--out {self.path}: {e.strerror or _one_line(e)}") from None
        shutil.rmtree(old, ignore_errors=True)


class StoreTarget:
    """A prefix in an object store: staged on this machine, uploaded file by file, manifest last."""

    def __init__(self, store: Store, *, force: bool) -> None:
        self.store = store
        self.uri = store.uri
        try:
            self.existing = bool(store.list(""))
        except StoreError as e:
            raise ExportError(f"--out: {e}") from None
        if self.existing and not force:
            raise ExportError(f"--out {self.uri}: not empty (use --force to replace it)")

    def staging(self, scratch: Path) -> Path:
        tmp = scratch / "out"
        tmp.mkdir()
        return tmp

    def commit(self, staging: Path, say: Say) -> None:
        files = output_files(staging)
        try:
            if self.existing:
                say(f"removing the previous export at {self.uri}")
                # Its manifest first: from here on nobody takes what is left for a whole model.
                self.store.delete_prefix(layout.MANIFEST)
                self.store.delete_prefix("")
            total = len(files) + 1
            for n, path in enumerate(files, 1):
                rel = path.relative_to(staging).as_posix()
                say(f"uploading {rel} ({n}/{total}, {_size(path.stat().st_size)})")
                self.store.write_bytes(rel, path.read_bytes())
            say(f"uploading {layout.MANIFEST} ({total}/{total})")
            self.store.write_bytes(layout.MANIFEST, (staging / layout.MANIFEST).read_bytes())
        except StoreError as e:
            raise ExportFailed(
                f"upload to {self.uri} failed: {_one_line(e)} (no {layout.MANIFEST} was written; "
                "run the export again with --force)"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    x = n / 1024
    for unit in ("KiB", "MiB"):
        if x < 1024:
            return f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"


def _folder_uri(uri: str) -> str:
    """`uri` as a comparable folder URI: local paths resolved, a `/` at the end."""
    if uri.startswith("s3://"):
        return uri.rstrip("/") + "/"
    path = Path(uri.removeprefix("file://")).expanduser().resolve()
    return f"file://{path.as_posix().rstrip('/')}/"


def check_apart(out: str, run_uri: str) -> None:
    """Refuse an --out that is the run, holds it or lies inside it: replacing it would destroy
    the run's artifacts, and a model inside a run is not one of its stages."""
    a, b = _folder_uri(out), _folder_uri(run_uri)
    if a.startswith(b) or b.startswith(a):
        raise ExportError(f"--out {out}: overlaps the run at {run_uri}; export outside the run")


def open_target(
    out: str,
    *,
    force: bool,
    endpoint: str | None = None,
    region: str | None = None,
    run_uri: str | None = None,
) -> Target:
    """The output for `--out`: a local folder (a path or `file://`) or an `s3://` prefix, never
    overlapping the run at `run_uri`."""
    if not out.strip():
        raise ExportError("--out: empty")
    if "://" in out and not out.startswith(("file://", "s3://")):
        raise ExportError(f"--out: unsupported scheme in {out!r} (use a path, file:// or s3://)")
    if out.startswith("s3://"):
        bucket, _, prefix = out.removeprefix("s3://").partition("/")
        if not bucket or not prefix.strip("/"):
            raise ExportError(
                f"--out {out}: give a prefix inside the bucket (s3://BUCKET/PREFIX), not a bucket"
            )
    if run_uri is not None:
        check_apart(out, run_uri)
    if out.startswith("s3://"):
        try:
            store = open_store(out, endpoint=endpoint, region=region)
        except StoreError as e:
            raise ExportError(f"--out: {e}") from None
        return StoreTarget(store, force=force)
    return LocalTarget(Path(out.removeprefix("file://")), force=force)


def discard(staging: Path | None) -> None:
    if staging is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
