"""`file://` store: a directory tree; each write is a temp file renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from selfmoa.store.base import Store


class FileStore(Store):
    def __init__(self, uri: str) -> None:
        path = uri.removeprefix("file://")
        self.root = Path(path).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _p(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return p

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{self.uri}/{key}: not found") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def _matches(self, prefix: str) -> list[Path]:
        """Files and directories whose keys start with `prefix`, read as a plain string like S3
        does: "iter-0" matches "iter-000/..." and "iter-001/..."; "a/b" matches "a/b/..." and
        "a/bc.txt"; "a/b/" matches only what is inside "a/b"."""
        if not prefix:
            return [self.root]
        base = self._p(prefix)
        if prefix.endswith("/"):
            return [base] if base.is_dir() else []
        parent = base.parent
        if not parent.is_dir():
            return []
        return [p for p in parent.iterdir() if p.name.startswith(base.name)]

    @staticmethod
    def _is_temp(p: Path) -> bool:
        return p.name.startswith(".") and p.name.endswith(".tmp")

    def list(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for c in self._matches(prefix):
            files = [c] if c.is_file() else [p for p in c.rglob("*") if p.is_file()]
            out += [p.relative_to(self.root).as_posix() for p in files if not self._is_temp(p)]
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for c in self._matches(prefix):
            if c == self.root:
                # Keep the root itself: the store stays usable (and other processes may hold it).
                for child in c.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
            elif c.is_dir():
                shutil.rmtree(c)  # also takes half-written temp files of a crashed writer
            else:
                c.unlink(missing_ok=True)
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return self._p(key)
