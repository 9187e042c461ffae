"""The artifact store: one small interface, `file://` and `s3://` behind it, the same layout on both.

Keys are `/`-separated paths relative to the store's root URI, and never more: a key with `..` or
`.` segments, a leading `/`, a backslash, an empty segment or a control character is refused on
every backend (`check_key`), so no key can name anything outside the store's root. Writes of a single object are
atomic on both backends (temp file + rename on disk; a single PUT on S3), so a reader never sees
half an object. Whether a *stage* is complete is decided by its `_manifest.json`, written last.
"""

from __future__ import annotations

import builtins
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from selfmoa.api.exits import BadInput, Unavailable
from selfmoa.store.scratch import filled_in_place


class StoreError(RuntimeError, BadInput):
    """The store can't be used as named (missing bucket, no permission, an unwritable path)."""


class StoreUnavailable(StoreError, Unavailable):
    """The store stopped answering or can't be reached: an outage, retryable (exit code 75)."""


class BadKeyError(StoreError, ValueError):
    """A key that would leave the store's root, or that no backend can hold safely."""


def check_key(key: str, *, prefix: bool = False) -> str:
    """`key` unchanged when it is a safe relative key; `BadKeyError` otherwise.

    With `prefix`, the empty key (the whole store) and a trailing `/` (inside a folder) are
    allowed too: that is how `list` and `delete_prefix` are asked.
    """
    if not isinstance(key, str):
        raise BadKeyError(f"store key must be a string, not {type(key).__name__}")
    if key == "" and prefix:
        return key
    body = key[:-1] if prefix and key.endswith("/") else key
    problem = None
    if not body:
        problem = "is empty"
    elif any(ord(c) < 32 or c == "\x7f" for c in body):
        problem = "holds a control character"
    elif "\\" in body:
        problem = "holds a backslash"
    elif body.startswith("/"):
        problem = "is an absolute path"
    else:
        parts = body.split("/")
        if any(p in (".", "..") for p in parts):
            problem = "climbs out with '.' or '..'"
        elif "" in parts:
            problem = "has an empty segment"
    if problem:
        raise BadKeyError(f"store key {key[:80]!r} {problem}: keys are relative paths in the store")
    return key


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
        head = f"{prefix.rstrip('/')}/" if prefix.strip("/") else ""
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = head + path.relative_to(local).as_posix()
            self.write_bytes(key, path.read_bytes())
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: Path) -> Path:
        """Copy every key under `prefix` (`""`: the whole store) into `local`; returns `local`."""
        prefix = f"{prefix.rstrip('/')}/" if prefix.strip("/") else ""
        keys = self.list(prefix)
        if not keys:
            raise FileNotFoundError(f"{self.uri}/{prefix}: nothing stored there")
        # Filled beside it, renamed into place when whole: callers take a folder holding its
        # config file for a finished download, and keys arrive config first.
        with filled_in_place(local) as tmp:
            for key in keys:
                # A listed key comes from the backend, not from us: on S3 it may hold `..`.
                rel = check_key(key[len(prefix) :])
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(self.read_bytes(key))
        return local

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the key, when the backend has one (file://)."""
        return None

    def sweep_temp(self, prefix: str = "") -> int:
        """Remove half-written objects left under `prefix` by killed writers; the number removed.
        Only file:// stores have any (S3 objects appear whole or not at all)."""
        return 0

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
        """A view of this store rooted at `prefix` (`""`: the store itself)."""
        return PrefixedStore(self, prefix) if prefix.strip("/") else self


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
        self.prefix = check_key(prefix, prefix=True).rstrip("/")
        if not self.prefix:
            raise BadKeyError("a store view needs a non-empty prefix")
        self.uri = f"{inner.uri.rstrip('/')}/{self.prefix}"

    def _k(self, key: str, *, prefix: bool = False) -> str:
        check_key(key, prefix=prefix)
        return f"{self.prefix}/{key}" if key else self.prefix + "/"

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(self._k(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.inner.write_bytes(self._k(key), data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._k(key))

    def list(self, prefix: str = "") -> list[str]:
        n = len(self.prefix) + 1
        return [k[n:] for k in self.inner.list(self._k(prefix, prefix=True))]

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(self._k(prefix, prefix=True))

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(self._k(key))

    def sweep_temp(self, prefix: str = "") -> int:
        return self.inner.sweep_temp(self._k(prefix, prefix=True))

    def child(self, prefix: str) -> Store:
        if not prefix.strip("/"):
            return self
        return PrefixedStore(self.inner, f"{self.prefix}/{check_key(prefix, prefix=True)}")
