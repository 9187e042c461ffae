"""The local executor with stand-in stages: order, resume after a crash, rollback, report hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fakes import FakeStages
from selfmoa.api import Phase, parse_run
from selfmoa.api.loader import SpecError
from selfmoa.local import executor as local
from selfmoa.stages import runner


def make_run(**spec: Any) -> Any:
    # Not the tiny model: these stand-in stages never load one.
    return parse_run(
        {"metadata": {"name": "t"}, "spec": {"policy": {"model": "org/model"}, **spec}}
    )


def test_full_loop_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages({0: 0.8, 1: 0.6, 2: 0.7, 3: 0.3}, fail_once=(2, "train"))
    monkeypatch.setattr(runner, "load_stage", fake.get)
    run = make_run(iterations=3, safetyReset={"enabled": True, "data": "reset.jsonl"})
    store = f"file://{tmp_path}"
    with pytest.raises(local.StageFailed, match="train"):
        local.run_local(run, storage_uri=store)
    first = list(fake.calls)
    assert first[0] == (0, "reset", 0) and first[-1] == (2, "train", 1)
    status = (tmp_path / "default/t/status.json").read_text()
    assert "Failed" in status
    # Resume: nothing finished is run again; the failed stage starts over.
    result = local.run_local(
        run, storage_uri=store, report=lambda s, sp, r: s.write_bytes("report.html", b"x")
    )
    resumed = fake.calls[len(first) :]
    assert resumed[0] == (2, "train", 1)
    assert not set(first[:-1]) & set(resumed)
    assert result.status.phase == Phase.succeeded
    # Iteration 2 made things worse: iteration 3 starts from iteration 1's adapter.
    assert (3, "redteam", 1) in resumed
    assert sorted(result.metrics) == [0, 1, 2, 3]
    assert (tmp_path / "default/t/report.html").exists()
    # A third run has nothing left to do.
    n = len(fake.calls)
    local.run_local(run, storage_uri=store)
    assert len(fake.calls) == n


def test_changed_spec_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "load_stage", FakeStages({0: 0.1}).get)
    local.run_local(
        make_run(stopWhen={"attackSuccessRateBelow": 0.5}), storage_uri=f"file://{tmp_path}"
    )
    with pytest.raises(SpecError, match=r"spec\.sampling: differs"):
        local.run_local(make_run(sampling={"temperature": 0.1}), storage_uri=f"file://{tmp_path}")
    # Extending the run is allowed.
    local.run_local(
        make_run(iterations=4, stopWhen={"attackSuccessRateBelow": 0.5}),
        storage_uri=f"file://{tmp_path}",
    )


def test_target_reached_at_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages({0: 0.01})
    monkeypatch.setattr(runner, "load_stage", fake.get)
    result = local.run_local(
        make_run(stopWhen={"attackSuccessRateBelow": 0.05}), storage_uri=f"file://{tmp_path}"
    )
    assert fake.calls == [(0, "evaluate", 0)]
    assert result.status.phase == Phase.succeeded
    assert "TargetReached" in {c.reason for c in result.status.conditions}
