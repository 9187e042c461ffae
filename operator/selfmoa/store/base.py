"""The artifact store: one small interface, `file://` and `s3://` behind it, the same layout on both.

Keys are `/`-separated paths relative to the store's root URI. Writes of a single object are
atomic on both backends (temp file + rename on disk; a single PUT on S3), so a reader never sees
half an object. Whether a *stage* is complete is decided by its `_manifest.json`, written last.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class StoreError(RuntimeError):
    """The store can't be used (unreachable endpoint, missing bucket, no permission)."""


class Store(ABC):
    """A key/value blob store rooted at `uri`."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when absent."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; the number deleted."""

    # `builtins.list`: inside the class body `list` is the method above, not the type.
    def upload_dir(self, local: Path, prefix: str) -> builtins.list[str]:
        """Copy a local directory tree under `prefix`; the keys written."""
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}"
            self.write_bytes(key, path.read_bytes())
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: Path) -> Path:
        """Copy every key under `prefix` into `local`; returns `local`."""
        prefix = prefix.rstrip("/") + "/"
        keys = self.list(prefix)
        if not keys:
            raise FileNotFoundError(f"{self.uri}/{prefix}: nothing stored there")
        # Into a sibling first, renamed into place when whole: callers take a folder holding
        # its config file for a finished download, and keys arrive config first.
        tmp = local.with_name(f".{local.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for key in keys:
            dest = tmp / key[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.read_bytes(key))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
        return local

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the key, when the backend has one (file://)."""
        return None

    # JSON helpers ----------------------------------------------------------------------

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json_bytes(obj))

    def read_jsonl(self, key: str) -> builtins.list[dict[str, Any]]:
        return list(iter_jsonl(self.read_bytes(key)))

    def write_jsonl(self, key: str, rows: Iterable[Mapping[str, Any]]) -> int:
        data, n = jsonl_bytes(rows)
        self.write_bytes(key, data)
        return n

    def child(self, prefix: str) -> Store:
        """A view of this store rooted at `prefix`."""
        return PrefixedStore(self, prefix)


def json_bytes(obj: Any) -> bytes:
    """How every JSON artifact is written: indented, keys sorted, newline at the end."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def jsonl_bytes(rows: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """JSON lines (keys sorted) and the number of rows."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + ("\n" if lines else "")).encode(), len(lines)


def iter_jsonl(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.decode().splitlines():
        if line.strip():
            yield json.loads(line)


class PrefixedStore(Store):
    def __init__(self, inner: Store, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.strip("/")
        self.uri = f"{inner.uri.rstrip('/')}/{self.prefix}"

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key.lstrip('/')}" if key else self.prefix + "/"

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(self._k(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.inner.write_bytes(self._k(key), data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._k(key))

    def list(self, prefix: str = "") -> list[str]:
        n = len(self.prefix) + 1
        return [k[n:] for k in self.inner.list(self._k(prefix))]

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(self._k(prefix))

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(self._k(key))

    def child(self, prefix: str) -> Store:
        return PrefixedStore(self.inner, f"{self.prefix}/{prefix.strip('/')}")
