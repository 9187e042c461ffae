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

    def list(self, prefix: str = "") -> list[str]:
        base = self._p(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            # A prefix that ends mid-name ("iter-0") still matches like S3 does.
            parent = base.parent
            if not parent.is_dir():
                return []
            cands = [p for p in parent.iterdir() if p.name.startswith(base.name)]
        else:
            cands = [base]
        out: list[str] = []
        for c in cands:
            files = [c] if c.is_file() else [p for p in c.rglob("*") if p.is_file()]
            out += [
                p.relative_to(self.root).as_posix()
                for p in files
                if not (p.name.startswith(".") and p.name.endswith(".tmp"))
            ]
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        base = self._p(prefix) if prefix else self.root
        if base.is_dir() and base != self.root:
            shutil.rmtree(base)
        else:
            for k in keys:
                self._p(k).unlink(missing_ok=True)
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return self._p(key)
