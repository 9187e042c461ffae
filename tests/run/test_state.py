"""Reading a run's finished stages back from its store (`run.state.finished_stages`): one
listing, or, knowing what was finished before, one `exists` for the stage that is running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run import layout
from selfmoa.run.outputs import stage_seconds
from selfmoa.run.state import finished_stages
from selfmoa.store.file import FileStore


class CountingStore(FileStore):
    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.asked: list[tuple[str, str]] = []

    def list(self, prefix: str = "") -> Any:
        self.asked.append(("list", prefix))
        return super().list(prefix)

    def exists(self, key: str) -> bool:
        self.asked.append(("exists", key))
        return super().exists(key)


def spec(**over: Any) -> AlignmentRunSpec:
    body = {
        "policy": {"model": "selfmoa/tiny"},
        "iterations": 2,
        "safetyReset": {"enabled": False},
        **over,
    }
    return parse_run({"metadata": {"name": "r"}, "spec": body}).spec


def finish(store: FileStore, *stages: tuple[int, str]) -> None:
    for k, stage in stages:
        store.write_json(layout.manifest_key(k, stage), {"stage": stage, "files": {}})


START = ((0, "evaluate"),)


def test_without_what_was_known_it_lists_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    finish(store, *START, (1, "redteam"))
    assert finished_stages(store, spec()) == {*START, (1, "redteam")}
    assert store.asked == [("list", "iter-")]


def test_knowing_what_was_finished_it_asks_only_for_the_running_stage(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    finish(store, *START, (1, "redteam"))
    known = finished_stages(store, spec())
    store.asked.clear()
    assert finished_stages(store, spec(), known) == known
    assert store.asked == [("exists", layout.manifest_key(1, "respond"))]
    # Two stages finished since (an operator that was away): both found, then the next asked.
    finish(store, (1, "respond"), (1, "judge"))
    store.asked.clear()
    assert finished_stages(store, spec(), known) == {*known, (1, "respond"), (1, "judge")}
    assert [key for _, key in store.asked] == [
        layout.manifest_key(1, "respond"),
        layout.manifest_key(1, "judge"),
        layout.manifest_key(1, "pairs"),
    ]


def test_a_run_that_exports_always_lists(tmp_path: Path) -> None:
    # Its export may follow any iteration (the gate can stop early): one listing sees them all.
    store = CountingStore(tmp_path)
    run = spec(output={"uri": f"file://{tmp_path}/out"})
    finish(store, *START, (0, "export"))
    known = finished_stages(store, run)
    store.asked.clear()
    assert finished_stages(store, run, known) == {*START, (0, "export")}
    assert store.asked == [("list", "iter-")]


def test_stage_seconds_reads_each_manifest_once_given_what_it_read_before(tmp_path: Path) -> None:
    class Reads(FileStore):
        read: list[str] = []

        def read_json(self, key: str) -> Any:
            self.read.append(key)
            return super().read_json(key)

    store = Reads(str(tmp_path))
    for k, stage, s in ((0, "evaluate", 3.0), (1, "redteam", 5.5)):
        store.write_json(layout.manifest_key(k, stage), {"stage": stage, "seconds": s})
    first = stage_seconds(store, frozenset({(0, "evaluate")}))
    assert first == {"iter-000/evaluate": 3.0}
    store.read.clear()
    both = stage_seconds(store, frozenset({(0, "evaluate"), (1, "redteam")}), first)
    assert both == {"iter-000/evaluate": 3.0, "iter-001/redteam": 5.5}
    assert store.read == [layout.manifest_key(1, "redteam")]
