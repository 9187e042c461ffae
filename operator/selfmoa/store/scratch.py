"""Scratch space that a killed process leaves behind, and how the next one clears it.

A stage killed with SIGKILL runs no cleanup: its scratch directory stays in the temp dir and a
file:// store write it had under way stays as a hidden temp sibling. Each of these carries its
owner (host, pid and the pid's start time, so a reused pid is not mistaken for the owner), and a
sweep removes those whose owner is gone. Nothing here removes what a live process still owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: The owner file inside each scratch directory.
OWNER_FILE = ".owner"
#: A scratch directory without an owner file (from an older version, or a crash between mkdir
#: and writing the file) is swept only once it is this old.
UNOWNED_AFTER_S = 24 * 3600.0
#: A store temp file without a readable owner is swept once it is this old: no single write
#: takes that long.
TEMP_FILE_AFTER_S = 6 * 3600.0

_SEP = "~"


def _start_time(pid: int) -> str:
    """The pid's start time in clock ticks since boot (Linux); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count from the end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _host() -> str:
    # No dots and no separator: the token is one piece of a dotted temp file name.
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:64]


def owner_token(pid: int | None = None) -> str:
    """`host~pid~start`: who owns a scratch directory or temp file."""
    pid = os.getpid() if pid is None else pid
    return _SEP.join((_host(), str(pid), _start_time(pid) or "0"))


def owner_is_gone(token: str) -> bool:
    """True when `token` names a process of this host that no longer runs. An owner on another
    host, or a token that doesn't parse, is never declared gone."""
    parts = token.strip().split(_SEP)
    if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    now = _start_time(pid)
    # Alive: it is the owner unless the pid was reused by a later process.
    return bool(now) and started not in ("0", now)


def make_scratch(root: Path | None = None, prefix: str = "selfmoa-") -> Path:
    """A new scratch directory under `root` (the system temp dir by default), owned by us."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    (path / OWNER_FILE).write_text(owner_token() + "\n")
    return path


@contextlib.contextmanager
def scratch_dir(root: Path | None = None, prefix: str = "selfmoa-") -> Iterator[Path]:
    """A scratch directory for the duration of the block, removed after it; the leftovers of
    killed processes under the same `root` and `prefix` are swept first."""
    sweep_stale(root, prefix)
    path = make_scratch(root, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def sweep_stale(
    root: Path | None = None, prefix: str = "selfmoa-", *, unowned_after_s: float = UNOWNED_AFTER_S
) -> int:
    """Remove scratch directories `root/prefix*` whose owner is gone; the number removed."""
    root = Path(tempfile.gettempdir()) if root is None else root
    removed = 0
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return 0
    for path in candidates:
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            token: str | None = (path / OWNER_FILE).read_text()
        except OSError:
            token = None
        stale = owner_is_gone(token) if token is not None else _age(path) > unowned_after_s
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += not path.exists()
    return removed


@contextlib.contextmanager
def filled_in_place(local: Path) -> Iterator[Path]:
    """A sibling directory of `local` to fill; renamed to `local` when the block ends, so a
    reader never finds `local` half-filled. Siblings left by a killed fill are removed first
    (only those whose process is gone); a fill that fails removes its own."""
    partial = f".{local.name}.partial-"
    if local.parent.is_dir():
        sweep_stale(local.parent, partial)
    tmp = local.parent / f"{partial}{owner_token()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / OWNER_FILE).write_text(owner_token() + "\n")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / OWNER_FILE).unlink(missing_ok=True)
    shutil.rmtree(local, ignore_errors=True)
    os.replace(tmp, local)


def temp_name(name: str) -> tuple[str, str]:
    """(prefix, suffix) of a temp sibling of the file `name`, carrying our owner token."""
    # The name is cut so that the whole stays under the usual 255-byte limit.
    return f".{name[:100]}.{owner_token()}.", ".tmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _temp_owner(name: str) -> str | None:
    """The owner token inside a temp sibling's name (`.NAME.TOKEN.RANDOM.tmp`), if it has one."""
    pieces = name.removesuffix(".tmp").split(".")
    if len(pieces) >= 4 and pieces[-2].count(_SEP) == 2:
        return pieces[-2]
    return None


def sweep_temp_files(root: Path, *, older_than_s: float = TEMP_FILE_AFTER_S) -> int:
    """Remove store temp siblings (`.NAME.OWNER.XXXX.tmp`) under `root` whose writer is gone
    (or, without a readable owner, that are older than `older_than_s`); the number removed."""
    removed = 0
    if not root.is_dir():
        return 0
    for path in root.rglob(".*.tmp"):
        if not is_temp_name(path.name) or path.is_dir():
            continue
        token = _temp_owner(path.name)
        gone = owner_is_gone(token) if token is not None else False
        if gone or _age(path) > older_than_s:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed
