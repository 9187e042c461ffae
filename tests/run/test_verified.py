"""A stored adapter is read only as its stage's manifest lists it (selfmoa.run.verified): the one
rule the stages, the in-process engines, the adapter agent and the export share."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from selfmoa.run import verified
from selfmoa.store import Store, open_store

KEY = "iter-002/train/adapter"
FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\x00weights"}


def _stored(tmp_path: Path, *, manifest: bool = True) -> Store:
    store = open_store(f"file://{tmp_path}/store")
    for name, data in FILES.items():
        store.write_bytes(f"{KEY}/{name}", data)
    if manifest:
        listed = {
            f"adapter/{n}": {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
            for n, d in FILES.items()
        }
        store.write_json("iter-002/train/_manifest.json", {"files": listed})
    return store


def test_a_verified_adapter_is_copied_whole(tmp_path: Path) -> None:
    dest = verified.download(_stored(tmp_path), KEY, tmp_path / "local" / "a")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FILES
    assert [p.name for p in (tmp_path / "local").iterdir()] == ["a"]  # no partial left
    # Already there: kept as it is (nothing read again).
    assert verified.download(open_store(f"file://{tmp_path}/empty"), KEY, dest) == dest


def test_a_changed_missing_or_unlisted_adapter_is_refused(tmp_path: Path) -> None:
    store = _stored(tmp_path)
    store.write_bytes(f"{KEY}/adapter_model.safetensors", b"\x00other")
    with pytest.raises(verified.Unverified, match=r"sha256 .* differs from") as err:
        verified.download(store, KEY, tmp_path / "local" / "a")
    assert err.value.permanent
    assert not (tmp_path / "local" / "a").exists()
    assert list((tmp_path / "local").iterdir()) == []  # the partial copy is gone too

    unfinished = _stored(tmp_path / "u", manifest=False)
    with pytest.raises(verified.Unverified, match="the stage never finished") as err:
        verified.download(unfinished, KEY, tmp_path / "u" / "local")
    assert not err.value.permanent  # the stage may still finish

    gone = _stored(tmp_path / "g")
    (tmp_path / "g" / "store" / KEY / "adapter_model.safetensors").unlink()
    with pytest.raises(verified.Unverified, match=r"listed in .* but missing"):
        verified.download(gone, KEY, tmp_path / "g" / "local")
