"""`selfmoa validate` refuses GPU settings vLLM refuses, and warns of wasted ones, from configs on
this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfmoa.api import parse_run
from selfmoa.engines.capacity import gpu_errors, gpu_warnings


def _spec(model: str, tp: int, engine: str = "vllm"):  # type: ignore[no-untyped-def]
    return parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {"policy": {"model": model}, "serving": {"engine": engine, "gpusPerModel": tp}},
        }
    ).spec


def test_tensor_parallel_must_divide_the_heads_of_a_readable_config(tmp_path: Path) -> None:
    model = tmp_path / "qwen-0.5b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_attention_heads": 14}))
    assert gpu_errors(_spec(str(model), 2)) == []
    (error,) = gpu_errors(_spec(str(model), 4))
    assert "doesn't divide the 14 attention heads" in error
    assert error.startswith("serving.gpusPerModel: 4")
    assert gpu_warnings(_spec(str(model), 4)) == []
    # In-process engines don't split heads: nothing to refuse, only a wasted setting.
    assert gpu_errors(_spec(str(model), 4, engine="transformers")) == []


def test_unreadable_configs_give_no_guess(tmp_path: Path) -> None:
    assert gpu_errors(_spec("org/not-on-this-machine", 4)) == []
    assert gpu_errors(_spec(str(tmp_path / "missing"), 4)) == []


def test_gpus_per_model_without_vllm_is_flagged() -> None:
    (warning,) = gpu_warnings(_spec("org/m", 2, engine="transformers"))
    assert "only vLLM servers use it" in warning


def test_validate_refuses_heads_vllm_cannot_split_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfmoa.cli import main

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_attention_heads": 6}))
    run = tmp_path / "run.yaml"
    run.write_text(
        "apiVersion: selfmoa.dev/v1alpha1\n"
        "kind: AlignmentRun\n"
        "metadata: {name: r}\n"
        f"spec: {{policy: {{model: '{model}'}}, serving: {{engine: vllm, gpusPerModel: 4}}}}\n"
    )
    assert main(["validate", str(run)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("selfmoa: error: spec.serving.gpusPerModel: 4 doesn't divide the 6")
    assert "ok" not in captured.out


def test_validate_prints_a_wasted_setting_and_still_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfmoa.cli import main

    run = tmp_path / "run.yaml"
    run.write_text(
        "apiVersion: selfmoa.dev/v1alpha1\n"
        "kind: AlignmentRun\n"
        "metadata: {name: r}\n"
        "spec: {policy: {model: org/m}, serving: {engine: transformers, gpusPerModel: 2}}\n"
    )
    assert main(["validate", str(run)]) == 0
    captured = capsys.readouterr()
    assert "warning: serving.gpusPerModel: only vLLM servers use it" in captured.err
    assert "ok" in captured.out
