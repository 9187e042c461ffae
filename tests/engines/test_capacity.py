"""`selfmoa validate` refuses GPU settings vLLM refuses, and warns of wasted ones, from configs on
this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfmoa.api import parse_run
from selfmoa.engines.capacity import gpu_errors, gpu_warnings, memory_errors, quantity_bytes


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


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("16Gi", 16 * 2**30), ("512Mi", 512 * 2**20), ("500M", 5e8), ("1e9", 1e9), ("3", 3.0),
     ("1.5Gi", 1.5 * 2**30), ("100m", 0.1), ("2E", 2e18), ("1.5e3", 1500.0)],
)  # fmt: skip
def test_quantities_read_as_kubernetes_reads_them(quantity: str, value: float) -> None:
    assert quantity_bytes(quantity) == pytest.approx(value)


def _weighted_model(tmp_path: Path, gib: float) -> Path:
    model = tmp_path / "big"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_attention_heads": 28}))
    with (model / "model-00001-of-00001.safetensors").open("wb") as f:
        f.truncate(int(gib * 2**30))  # sparse: only its size matters
    return model


def _memory_spec(model: Path, memory: str | None, **spec: Any):  # type: ignore[no-untyped-def]
    trainer: dict[str, Any] = {"gpus": spec.pop("gpus", 1)}
    if memory:
        trainer["resources"] = {"memory": memory}
    return parse_run(
        {"metadata": {"name": "r"}, "spec": {"policy": {"model": str(model)}, "trainer": trainer, **spec}}
    ).spec  # fmt: skip


def test_a_merging_export_needs_the_weights_in_memory(tmp_path: Path) -> None:
    model = _weighted_model(tmp_path, 3.2)
    merge = {"output": {"uri": "s3://b/out", "merge": True}}
    (error,) = memory_errors(_memory_spec(model, "2Gi", **merge))
    assert error.startswith("trainer.resources.memory: 2Gi is less than the 3.2 GiB of ")
    assert "stage export merges it (output.merge)" in error and "at least 4Gi" in error
    assert memory_errors(_memory_spec(model, "4Gi", **merge)) == []
    # Adapters only, on GPUs: nothing loads the policy on a CPU.
    assert memory_errors(_memory_spec(model, "2Gi", output={"uri": "s3://b/out"})) == []


def test_a_run_without_gpus_loads_the_policy_on_the_cpu(tmp_path: Path) -> None:
    model = _weighted_model(tmp_path, 3.2)
    (error,) = memory_errors(_memory_spec(model, "3000Mi", gpus=0))
    assert "which stage respond loads it on a CPU" in error  # the first stage that does
    assert memory_errors(_memory_spec(model, "3000Mi", gpus=1)) == []


def test_no_guess_without_local_weights_or_a_limit(tmp_path: Path) -> None:
    assert memory_errors(_memory_spec(tmp_path / "missing", "1Gi", gpus=0)) == []
    assert memory_errors(_memory_spec(_weighted_model(tmp_path, 3.2), None, gpus=0)) == []


def test_validate_refuses_too_little_memory_for_a_merge_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfmoa.cli import main

    model = _weighted_model(tmp_path, 1.5)
    run = tmp_path / "run.yaml"
    run.write_text(
        "apiVersion: selfmoa.dev/v1alpha1\n"
        "kind: AlignmentRun\n"
        "metadata: {name: r}\n"
        f"spec: {{policy: {{model: '{model}'}}, output: {{uri: 's3://b/o', merge: true}}, "
        "trainer: {resources: {memory: 1Gi}}}\n"
    )
    assert main(["validate", str(run)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("selfmoa: error: spec.trainer.resources.memory: 1Gi is less than")
