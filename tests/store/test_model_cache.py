"""A model is built once and reused through the run's store; copies are whole and checked."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from selfmoa.store import StoreError, open_store
from selfmoa.store.model_cache import MODELS, manifest_key, materialize


class CountingBuild:
    """A 'model' of two files; counts builds. `tag` makes builds differ in content."""

    def __init__(self, tag: str = "a", delay: float = 0.0) -> None:
        self.tag, self.delay, self.calls = tag, delay, 0

    def __call__(self, dest: Path, say: object) -> None:
        self.calls += 1
        time.sleep(self.delay)
        (dest / "config.json").write_text(json.dumps({"tag": self.tag}))
        (dest / "weights").mkdir()
        (dest / "weights" / "model.bin").write_bytes(self.tag.encode() * 1000)


def test_built_once_then_fetched_by_every_other_pod(tmp_path: Path) -> None:
    shared = open_store(f"file://{tmp_path / 'store'}")
    build = CountingBuild()
    first = materialize("m-1", build, cache_dir=tmp_path / "pod1", shared=shared)
    again = materialize("m-1", build, cache_dir=tmp_path / "pod1", shared=shared)
    other = materialize("m-1", build, cache_dir=tmp_path / "pod2", shared=shared)
    assert build.calls == 1 and first == again
    assert (other / "weights" / "model.bin").read_bytes() == (
        first / "weights" / "model.bin"
    ).read_bytes()
    assert shared.exists(manifest_key("m-1"))


def test_without_a_shared_store_it_is_a_local_cache(tmp_path: Path) -> None:
    build = CountingBuild()
    materialize("m", build, cache_dir=tmp_path)
    materialize("m", build, cache_dir=tmp_path)
    assert build.calls == 1


def test_a_tampered_copy_is_refused(tmp_path: Path) -> None:
    shared = open_store(f"file://{tmp_path / 'store'}")
    materialize("m", CountingBuild(), cache_dir=tmp_path / "pod1", shared=shared)
    manifest = shared.read_json(manifest_key("m"))
    shared.write_bytes(f"{MODELS}/m/{manifest['build']}/weights/model.bin", b"evil")
    with pytest.raises(StoreError, match="sha256 differs"):
        materialize("m", CountingBuild(), cache_dir=tmp_path / "pod2", shared=shared)
    assert not (tmp_path / "pod2" / MODELS / "m").exists()  # nothing half-made is left


def test_concurrent_first_uses_never_mix_two_builds(tmp_path: Path) -> None:
    shared = open_store(f"file://{tmp_path / 'store'}")
    builds = [CountingBuild("a", delay=0.2), CountingBuild("b", delay=0.2)]
    out: list[Path] = []

    def pod(i: int) -> None:
        out.append(materialize("m", builds[i], cache_dir=tmp_path / f"pod{i}", shared=shared))

    threads = [threading.Thread(target=pod, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each pod has a whole copy of its own build; a later pod gets one whole published copy.
    for d in out:
        tag = (d / "config.json").read_text()
        assert (d / "weights" / "model.bin").read_bytes() == tag.split('"')[3].encode() * 1000
    late = materialize("m", CountingBuild("c"), cache_dir=tmp_path / "late", shared=shared)
    tag = (late / "config.json").read_text().split('"')[3]
    assert (
        tag in ("a", "b") and (late / "weights" / "model.bin").read_bytes() == tag.encode() * 1000
    )
