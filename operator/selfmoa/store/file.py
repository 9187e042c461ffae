"""`file://` store: a directory tree; each write is a temp file renamed into place.

Every key is checked (`check_key`), then resolved with symlinks followed and refused unless the
result is still under the root: a symlink inside the store that points outside is never read
through or written through. An OS error (no permission, read-only file system, a file where a
folder should be) is one `StoreError` line naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfmoa.store.base import BadKeyError, Store, StoreError, check_key
from selfmoa.store.scratch import is_temp_name, sweep_temp_files, temp_name


class FileStore(Store):
    def __init__(self, uri: str) -> None:
        path = uri.removeprefix("file://")
        if "\x00" in path:
            raise StoreError(f"store path {path[:80]!r} holds a NUL byte")
        try:
            self.root = Path(path).expanduser().resolve()
        except (OSError, RuntimeError) as e:
            raise StoreError(f"store path {path[:200]}: {e}") from None
        self.uri = f"file://{self.root}"

    def _inside(self, p: Path) -> bool:
        return p == self.root or self.root in p.parents

    def _p(self, key: str, *, prefix: bool = False) -> Path:
        check_key(key, prefix=prefix)
        try:
            p = (self.root / key).resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise StoreError(f"cannot resolve {self.uri}/{key}: {e}") from None
        if not self._inside(p):
            raise BadKeyError(
                f"store key {key[:80]!r} escapes the store {self.uri} (via a symlink)"
            )
        return p

    @contextmanager
    def _os_errors(self, key: str, doing: str, *, absent_ok: bool = False) -> Iterator[None]:
        """Any OS error as one StoreError line naming the path; with `absent_ok`, a
        `FileNotFoundError` passes through (the object is absent, the store is fine)."""
        try:
            yield
        except OSError as e:
            if absent_ok and isinstance(e, FileNotFoundError):
                raise
            why = e.strerror or errno.errorcode.get(e.errno or 0, "") or str(e)
            raise StoreError(f"cannot {doing} {self.uri}/{key}: {why}") from None

    def read_bytes(self, key: str) -> bytes:
        p = self._p(key)
        with self._os_errors(key, "read", absent_ok=True):
            try:
                return p.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                # A folder, or a path through a file: absent as an object either way.
                raise FileNotFoundError(f"{self.uri}/{key}: not found") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        p = self._p(key)
        head, tail = temp_name(p.name)
        with self._os_errors(key, "write"):
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=head, suffix=tail)
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
        p = self._p(key)
        with self._os_errors(key, "check"):
            return p.is_file()

    def _matches(self, prefix: str) -> list[Path]:
        """Files and directories whose keys start with `prefix`, read as a plain string like S3
        does: "iter-0" matches "iter-000/..." and "iter-001/..."; "a/b" matches "a/b/..." and
        "a/bc.txt"; "a/b/" matches only what is inside "a/b"."""
        if not prefix:
            return [self.root]
        base = self._p(prefix, prefix=True)
        if prefix.endswith("/"):
            return [base] if base.is_dir() else []
        parent = base.parent
        if not parent.is_dir():
            return []
        return [p for p in parent.iterdir() if p.name.startswith(base.name)]

    def list(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        with self._os_errors(prefix, "list", absent_ok=True):
            for c in self._matches(prefix):
                if c.is_symlink() and not self._inside(c.resolve()):
                    continue
                files = [c] if c.is_file() else [p for p in c.rglob("*") if p.is_file()]
                out += [
                    p.relative_to(self.root).as_posix()
                    for p in files
                    if not is_temp_name(p.name) and self._inside(p.resolve())
                ]
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        with self._os_errors(prefix, "delete"):
            for c in self._matches(prefix):
                if c == self.root:
                    # Keep the root itself: the store stays usable (other processes may hold it).
                    for child in c.iterdir():
                        _remove(child)
                else:
                    _remove(c)  # also takes half-written temp files of a crashed writer
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return self._p(key)

    def sweep_temp(self, prefix: str = "") -> int:
        """Remove temp siblings under `prefix` whose writer was killed (see store/scratch.py)."""
        root = self._p(prefix, prefix=True) if prefix else self.root
        with self._os_errors(prefix, "clean up"):
            return sweep_temp_files(root)


def _remove(path: Path) -> None:
    """Remove a file, a folder, or a symlink itself (never what a symlink points at)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)
