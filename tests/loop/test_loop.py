"""The whole loop on the tiny profile, through the real stages: in-process, and as `selfmoa run`
killed with SIGKILL half-way and run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfmoa.api import Phase, parse_run
from selfmoa.local.executor import run_local
from selfmoa.run import layout, stage_table
from selfmoa.run.report import render_report

pytestmark = pytest.mark.slow

SMALL: dict[str, Any] = {
    "apiVersion": "selfmoa.dev/v1alpha1",
    "kind": "AlignmentRun",
    "metadata": {"name": "small"},
    "spec": {
        "policy": {"model": "selfmoa/tiny"},
        "safetyReset": {"enabled": True, "steps": 6},
        "redTeam": {"promptsPerIteration": 24},
        "sampling": {"responsesPerPrompt": 2, "temperature": 1.0, "maxNewTokens": 40},
        "judges": [
            {"name": "refusal-a", "objective": "safety", "noise": 0.1, "seed": 1},
            {"name": "refusal-b", "objective": "safety", "noise": 0.2, "seed": 2},
            {"name": "helpful-a", "objective": "helpfulness", "noise": 0.1, "seed": 3},
        ],
        "training": {
            "learningRate": 0.002,
            "batchSize": 8,
            "maxLength": 128,
            "lora": {"r": 4, "alpha": 8},
        },
        "iterations": 2,
        "evaluation": {"goldJudge": True, "ceiling": True, "maxPrompts": 36},
    },
}


def test_loop_in_process(tmp_path: Path) -> None:
    run = parse_run(SMALL)
    result = run_local(run, storage_uri=f"file://{tmp_path}")
    assert result.status.phase == Phase.succeeded, result.status.message
    assert sorted(result.metrics) == [0, 1, 2]
    root = tmp_path / "default" / "small"
    for k in (1, 2):
        for stage in stage_table.LOOP:
            assert (root / layout.manifest_key(k, stage)).exists()
        assert (root / layout.stage_file(k, "train", "adapter/adapter_config.json")).exists()
    m1 = result.metrics[1]
    assert m1.pairs > 0 and m1.tokens > 0 and m1.gold is not None and m1.ceiling is not None
    assert m1.per_category
    assert [i.index for i in result.status.iterations] == [0, 1, 2]
    # What the gate decided on (validation), what the answers were (outcome classes), the judges
    # against gold, the capability kept, and the samples a person can read, every iteration.
    for k, m in result.metrics.items():
        assert m.validation is not None and m.prompts == 36
        assert m.outcomes is not None and m.outcomes.source == "gold"
        assert set(m.outcomes.by_kind) == {"harmful", "benign", "legit"}
        assert m.outcomes.declined is not None and m.outcomes.deflection is not None
        assert {j.name for j in m.judges} >= {"refusal-a", "helpful-a", "ensemble"}
        assert m.capability is not None and m.capability.perplexity >= 1.0
        # ... and on the validation split's reference answers, which a capability bound reads.
        vcap = m.validation.capability
        assert vcap is not None and "validation" in vcap.source and vcap.perplexity >= 1.0
        assert vcap.tokens != m.capability.tokens
        assert m.samples and all(s.outcome for s in m.samples)
        assert (m.sampled is not None) == (k >= 1)
    sampled = m1.sampled
    assert sampled is not None and abs(sum(sampled.by_kind["harmful"].values()) - 1) < 1e-3
    assert (root / layout.stage_file(1, "evaluate", "validation-judgments.jsonl")).exists()
    report = render_report(title="small", metrics=result.metrics)
    assert "Outcome classes" in report and "Sample answers" in report


def test_kill_and_resume(tmp_path: Path) -> None:
    spec = dict(SMALL)
    spec["spec"] = {**SMALL["spec"], "iterations": 1}
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(spec))
    store = tmp_path / "runs"
    root = store / "default" / "small"
    cmd = [sys.executable, "-m", "selfmoa.cli", "run", str(f), "--store", str(store), "--quiet"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    target = root / layout.manifest_key(1, "respond")
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached iteration 1's respond stage"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("_manifest.json")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # Nothing finished before the kill was recomputed.
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, p
    assert (root / layout.manifest_key(1, "evaluate")).exists()
    assert (root / layout.REPORT).exists()
    assert "iter" in done.stdout and "wall time per stage" in done.stdout
