"""Leftovers of killed processes: scratch directories and half-written store files are swept,
and nothing a live process owns is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfmoa.store import open_store
from selfmoa.store.scratch import (
    OWNER_FILE,
    make_scratch,
    owner_is_gone,
    owner_token,
    scratch_dir,
    sweep_stale,
    sweep_temp_files,
)

SCRATCH_CHILD = """
import sys, time
from pathlib import Path
from selfmoa.store.scratch import make_scratch
d = make_scratch(Path(sys.argv[1]))
(d / "model.bin").write_bytes(b"x" * 1024)
print(d, flush=True)
time.sleep(120)
"""

WRITER_CHILD = """
import os, sys, time
from selfmoa.store import open_store
store = open_store("file://" + sys.argv[1])
def hang(*args):
    print("writing", flush=True)
    time.sleep(120)
os.replace = hang  # the temp file is written and synced; the rename never comes
store.write_bytes("iter-001/pairs/pairs.jsonl", b"{}\\n" * 100)
"""


def spawn(code: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """A child running `code`; returns it with the first line it printed."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, "the child printed nothing"
    return child, line


def kill9(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def test_sigkilled_scratch_dir_is_swept(tmp_path: Path) -> None:
    child, made = spawn(SCRATCH_CHILD, str(tmp_path))
    scratch = Path(made)
    mine = make_scratch(tmp_path)
    other = tmp_path / "unrelated"
    other.mkdir()
    try:
        assert scratch.is_dir() and (scratch / OWNER_FILE).is_file()
        # While the child lives, its directory is its own.
        assert sweep_stale(tmp_path, "selfmoa-") == 0
        assert scratch.is_dir()
    finally:
        kill9(child)
    assert scratch.is_dir()  # SIGKILL ran no cleanup
    assert sweep_stale(tmp_path, "selfmoa-") == 1
    assert not scratch.exists()
    assert mine.is_dir() and other.is_dir()  # ours (alive) and a foreign folder stay
    assert sweep_stale(tmp_path, "selfmoa-") == 0


def test_scratch_dir_sweeps_then_cleans_up(tmp_path: Path) -> None:
    child, made = spawn(SCRATCH_CHILD, str(tmp_path))
    kill9(child)
    with scratch_dir(tmp_path) as work:
        assert not Path(made).exists()  # the killed child's leftovers went first
        assert work.is_dir() and work.name.startswith("selfmoa-")
        with scratch_dir(tmp_path) as nested:
            assert work.is_dir()  # a live owner's directory is never swept
        assert not nested.exists()
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []


def test_unowned_scratch_dirs_go_only_when_old(tmp_path: Path) -> None:
    fresh = tmp_path / "selfmoa-fresh"
    old = tmp_path / "selfmoa-old"
    fresh.mkdir()
    old.mkdir()
    (old / "x").write_text("x")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    assert sweep_stale(tmp_path, "selfmoa-") == 1
    assert fresh.is_dir() and not old.exists()


def test_symlinked_scratch_candidates_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "keep"
    target.mkdir()
    (target / OWNER_FILE).write_text("host~1~1\n")
    os.symlink(target, tmp_path / "selfmoa-link")
    assert sweep_stale(tmp_path, "selfmoa-") == 0
    assert target.is_dir()


def test_owner_tokens() -> None:
    me = owner_token()
    assert not owner_is_gone(me)
    host, pid, started = me.split("~")
    assert pid == str(os.getpid())
    # Same pid, another start time: the pid was reused, the owner is gone.
    if started != "0":
        assert owner_is_gone(f"{host}~{pid}~{int(started) + 1}")
    # Another host, or nonsense: never declared gone (it may be alive over there).
    assert not owner_is_gone(f"other-host~{pid}~{started}")
    assert not owner_is_gone("garbage")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert owner_is_gone(f"{host}~{dead.pid}~{started}")


def test_sigkilled_writer_leaves_no_visible_object_and_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = open_store(f"file://{root}")
    store.write_bytes("iter-001/judge/judgments.jsonl", b"{}\n")
    child, _ = spawn(WRITER_CHILD, str(root))
    try:
        temps = list(root.rglob(".*.tmp"))
        assert len(temps) == 1 and temps[0].parent == root / "iter-001" / "pairs"
        assert store.sweep_temp() == 0  # the writer still lives
    finally:
        kill9(child)
    assert temps[0].exists()
    # Never visible as an object, never mistaken for one.
    assert store.list() == ["iter-001/judge/judgments.jsonl"]
    assert not store.exists("iter-001/pairs/pairs.jsonl")
    # Our own write in progress elsewhere is not touched.
    head = f".x.{owner_token()}."
    live = root / "iter-001" / "judge" / f"{head}abc123.tmp"
    live.write_bytes(b"half")
    assert store.child("iter-001").sweep_temp() == 1
    assert not temps[0].exists() and live.exists()
    assert store.read_bytes("iter-001/judge/judgments.jsonl") == b"{}\n"


def test_temp_files_without_an_owner_go_when_old(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    old = tmp_path / "a" / ".f.json.q1w2e3.tmp"
    new = tmp_path / "a" / ".g.json.r4t5y6.tmp"
    for p in (old, new):
        p.write_bytes(b"x")
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    assert sweep_temp_files(tmp_path) == 1
    assert new.exists() and not old.exists()


def test_sweep_on_s3_is_a_no_op(s3_bucket: str, moto_endpoint: str) -> None:
    from selfmoa.store.s3 import S3Store

    store = S3Store(f"s3://{s3_bucket}/p", endpoint=moto_endpoint)
    store.write_bytes("a/.b.tmp", b"x")  # a legitimate object that merely looks like a temp
    assert store.sweep_temp() == 0
    assert store.list() == ["a/.b.tmp"]


def test_killed_download_partial_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    store.write_bytes("m/config.json", b"{}")
    cache = tmp_path / "cache"
    cache.mkdir()
    # What a download killed midway leaves: a partial sibling owned by a dead process.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, _, started = owner_token().split("~")
    stale = cache / f".m.partial-{host}~{dead.pid}~{started}"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(f"{host}~{dead.pid}~{started}\n")
    (stale / "half.bin").write_bytes(b"x")
    dest = store.download_dir("m", cache / "m")
    assert (dest / "config.json").read_bytes() == b"{}"
    assert not (dest / OWNER_FILE).exists()
    assert sorted(p.name for p in cache.iterdir()) == ["m"]
