"""`stages.base.execute` on both backends: done stages are skipped, crashed ones are redone."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from selfmoa.api import parse_run
from selfmoa.engines.provider import EngineProvider
from selfmoa.run import layout
from selfmoa.stages.base import StageContext, StageOutput, execute, is_done
from selfmoa.store import Store


@pytest.fixture
def ctx(store: Store, tmp_path: Path) -> StageContext:
    spec = parse_run({"spec": {"policy": {"model": "selfmoa/tiny"}}}).spec
    return StageContext(
        spec=spec,
        store=store.child("ns/run"),
        iteration=1,
        workdir=tmp_path / "work",
        engines=EngineProvider(spec),
    )


class Boom(RuntimeError):
    pass


def test_done_stage_is_skipped(ctx: StageContext) -> None:
    calls = []

    def stage(c: StageContext, out: StageOutput) -> dict[str, Any]:
        calls.append(c.iteration)
        out.write_jsonl(layout.PAIRS, [{"i": i} for i in range(3)])
        out.write_bytes("extra/blob.bin", b"\x00\x01")
        return {"pairs": 3}

    manifest, ran = execute("pairs", stage, ctx)
    assert ran and calls == [1]
    assert is_done(ctx.store, 1, "pairs")
    again, ran = execute("pairs", stage, ctx)
    assert not ran and calls == [1]
    assert again == manifest
    assert manifest["summary"] == {"pairs": 3}
    assert manifest["files"][layout.PAIRS]["rows"] == 3


def test_crashed_stage_leaves_no_manifest_and_is_redone(ctx: StageContext) -> None:
    # Another stage's output and a neighbour sharing the name's prefix must survive the cleanup.
    ctx.store.write_bytes("iter-001/judge/judgments.jsonl", b"{}\n")
    ctx.store.write_bytes("iter-001/pairs-notes.txt", b"keep")

    def crashing(c: StageContext, out: StageOutput) -> dict[str, Any]:
        out.write_jsonl("half.jsonl", [{"i": 0}])
        out.write_bytes("sub/partial.bin", b"xx")
        raise Boom("died half-way")

    with pytest.raises(Boom):
        execute("pairs", crashing, ctx)
    assert not is_done(ctx.store, 1, "pairs")
    assert ctx.store.list("iter-001/pairs/") == [
        "iter-001/pairs/half.jsonl",
        "iter-001/pairs/sub/partial.bin",
    ]

    calls = []

    def good(c: StageContext, out: StageOutput) -> dict[str, Any]:
        calls.append(1)
        # The previous attempt's files are gone before the stage runs again.
        assert c.store.list("iter-001/pairs/") == []
        out.write_jsonl(layout.PAIRS, [{"ok": True}])
        return {}

    manifest, ran = execute("pairs", good, ctx)
    assert ran and calls == [1]
    assert ctx.store.list("iter-001/pairs/") == [
        "iter-001/pairs/_manifest.json",
        "iter-001/pairs/pairs.jsonl",
    ]
    assert set(manifest["files"]) == {layout.PAIRS}
    assert ctx.store.read_bytes("iter-001/judge/judgments.jsonl") == b"{}\n"
    assert ctx.store.read_bytes("iter-001/pairs-notes.txt") == b"keep"
    _, ran = execute("pairs", good, ctx)
    assert not ran and calls == [1]


def test_manifest_lists_every_file_with_its_sha256(ctx: StageContext, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    (adapter / "nested").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "nested" / "weights.bin").write_bytes(bytes(range(200)))

    def stage(c: StageContext, out: StageOutput) -> dict[str, Any]:
        out.write_json(layout.METRICS, {"safety": 0.5})
        out.write_jsonl("rows.jsonl", [{"a": "ü"}, {"b": 2}])
        out.write_bytes("raw.bin", b"raw")
        out.upload_dir(layout.ADAPTER, adapter)
        return {}

    manifest, _ = execute("train", stage, ctx)
    prefix = layout.stage_dir(1, "train")
    stored = {k.removeprefix(prefix + "/") for k in ctx.store.list(prefix + "/")} - {
        layout.MANIFEST
    }
    assert set(manifest["files"]) == stored
    assert stored == {
        "metrics.json",
        "rows.jsonl",
        "raw.bin",
        "adapter/adapter_config.json",
        "adapter/nested/weights.bin",
    }
    for name, entry in manifest["files"].items():
        data = ctx.store.read_bytes(f"{prefix}/{name}")
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert entry["bytes"] == len(data)
    assert manifest["files"]["rows.jsonl"]["rows"] == 2
    assert manifest["stage"] == "train" and manifest["iteration"] == 1
    assert manifest["finished"] >= manifest["started"]
    assert "selfmoa" in manifest["versions"]
    # The manifest on the store is the one returned.
    assert ctx.store.read_json(layout.manifest_key(1, "train")) == manifest
