"""lm-eval as a capability measure: local tasks on the tiny base (with and without an adapter),
and one actionable line for everything that can be missing.

The local task (tests/stages/lmeval_tasks) ships its rows beside its YAML, so nothing here needs
the network; a built-in hub task (hellaswag) shows how an uncached data set is reported.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from fakes import trainutil
from selfmoa.stages.lm_eval.runner import (
    CapabilityUnavailable,
    TaskScore,
    primary_metric,
    run_lm_eval,
)

TASKS = Path(__file__).parent / "lmeval_tasks"
TASK = "selfmoa_tiny_mc"
ROWS = 12


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def lm_eval() -> object:
    return pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from selfmoa.tiny import ensure_base

    # Same cache path as tests/tiny/conftest.py: one build per session.
    return ensure_base(tmp_path_factory.getbasetemp() / "selfmoa-cache")


@pytest.fixture(scope="module")
def adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainutil().random_adapter(base, tmp_path_factory.mktemp("lmeval-adapter"))


def _run(model: Path | str, **overrides: object) -> list[TaskScore]:
    args: dict[str, object] = {
        "adapter": None,
        "tasks": [TASK],
        "limit": 8,
        "include_path": str(TASKS),
        "device": "cpu",
    }
    args.update(overrides)
    return run_lm_eval(str(model), **args)  # type: ignore[arg-type]


def _unavailable(model: Path | str, **overrides: object) -> str:
    with pytest.raises(CapabilityUnavailable) as info:
        _run(model, **overrides)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.slow
@pytest.mark.usefixtures("lm_eval")
def test_local_task_scores_the_base_and_the_adapter_deterministically(
    base: Path, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for adapter_dir in (None, str(adapter)):
        first = _run(base, adapter=adapter_dir)
        assert first == _run(base, adapter=adapter_dir)
        [score] = first
        assert score.task == TASK
        assert score.metric == "acc_norm"
        assert 0.0 <= score.value <= 1.0
        assert score.samples == 8
    [whole] = _run(base, limit=None, batch_size=4)
    assert whole.samples == ROWS
    [more] = _run(base, limit=100)
    assert more.samples == ROWS
    # lm-eval wrote nothing where it ran (no results, samples, offload or cache files).
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.usefixtures("lm_eval")
def test_a_json_task_with_local_data_files_runs_offline(base: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = {
        "task": "local_json_mc",
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(TASKS / f"{TASK}.jsonl")},
            # The json builder caches what it parsed; keep that out of ~/.cache.
            "cache_dir": str(tmp_path / "datasets-cache"),
        },
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (tasks / "local_json_mc.yaml").write_text(json.dumps(spec))  # JSON is YAML
    [score] = _run(base, tasks=["local_json_mc"], include_path=str(tasks), limit=None)
    assert score == TaskScore("local_json_mc", "acc", score.value, ROWS)
    assert 0.0 <= score.value <= 1.0


@pytest.mark.usefixtures("lm_eval")
def test_an_unknown_task_is_named(tmp_path: Path) -> None:
    # Tasks are checked before the model is loaded: any directory will do as the model.
    message = _unavailable(tmp_path, tasks=[TASK, "no_such_task_xyz", "nor_this_one"])
    assert "unknown lm-eval tasks no_such_task_xyz, nor_this_one" in message
    assert TASK not in message.split(":")[0]


@pytest.mark.usefixtures("lm_eval")
def test_a_hub_task_without_cached_data_fails_fast_and_says_where_data_must_be(
    tmp_path: Path,
) -> None:
    import datasets
    import huggingface_hub.constants

    before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    message = _unavailable(tmp_path, tasks=["hellaswag"], include_path=None)
    assert "hellaswag" in message
    assert "not available offline" in message
    assert "local HF datasets cache" in message and "include_path" in message
    # The first call indexed lm-eval's built-in tasks; this one shows that the data check itself
    # doesn't wait on the network (an unreachable hub costs ~25 s of retries without offline mode).
    started = time.perf_counter()
    assert _unavailable(tmp_path, tasks=["hellaswag"], include_path=None) == message
    assert time.perf_counter() - started < 10
    assert before == (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)


@pytest.mark.usefixtures("lm_eval")
def test_a_missing_adapter_or_model_directory_is_named(tmp_path: Path) -> None:
    base = tmp_path  # checked before anything is loaded
    gone = tmp_path / "no-adapter"
    assert _unavailable(base, adapter=str(gone)) == f"adapter directory {gone} does not exist"
    not_peft = tmp_path / "not-peft"
    not_peft.mkdir()
    assert "no adapter_config.json" in _unavailable(base, adapter=str(not_peft))
    (not_peft / "adapter_config.json").write_text("{}")
    assert "no adapter_model.safetensors" in _unavailable(base, adapter=str(not_peft))
    assert (
        _unavailable(tmp_path / "no-model")
        == f"model directory {tmp_path / 'no-model'} does not exist"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("lm_eval")
def test_an_adapter_that_does_not_load_is_reported_with_the_adapter(
    base: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    message = _unavailable(base, adapter=str(broken))
    assert message.startswith(f"lm-eval could not load model {base} with adapter {broken}: ")


def test_lm_eval_not_installed_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    message = _unavailable(tmp_path)
    assert message == "lm-eval is not installed: pip install 'selfmoa[lmeval]'"


def test_the_primary_metric_prefers_acc_norm_then_acc_then_any_numeric() -> None:
    both = {"alias": "t", "acc,none": 0.25, "acc_stderr,none": "N/A", "acc_norm,none": 0.5}
    assert primary_metric(both) == ("acc_norm", 0.5)
    assert primary_metric({"acc,none": 0.25, "acc_stderr,none": 0.1}) == ("acc", 0.25)
    other = {
        "alias": "t",
        "sample_len": 3,
        "exact_match_stderr,strict": 0.1,
        "exact_match,strict": 1,
    }
    assert primary_metric(other) == ("exact_match", 1.0)
    assert primary_metric({"alias": "t", "bleu_stderr,none": 0.1}) is None


# ----------------------------------------------------------------------------- the evaluate stage


def _stage_ctx(tmp_path: Path, lm_eval_spec: dict[str, object]) -> object:
    from selfmoa.api.spec import AlignmentRunSpec

    spec = AlignmentRunSpec.model_validate(
        {
            "policy": {"model": "selfmoa/tiny"},
            "serving": {"device": "cpu"},
            "evaluation": {"lmEval": lm_eval_spec},
            "stopWhen": {"maxCapabilityDrop": 0.1},
            "storage": {"uri": f"file://{tmp_path / 'store'}"},
        }
    )
    return trainutil().make_ctx(spec, tmp_path, iteration=0)


def test_the_evaluate_stage_reports_task_scores(
    lm_eval: object, base: Path, tmp_path: Path
) -> None:
    from selfmoa.stages.capability import lm_eval_capability

    ctx = _stage_ctx(tmp_path, {"tasks": [TASK], "includePath": str(TASKS), "limit": 4})
    cap = lm_eval_capability(ctx, None)  # type: ignore[arg-type]
    assert cap is not None and cap.perplexity is None
    (task,) = cap.tasks
    assert task.task == TASK and task.samples == 4 and 0.0 <= task.value <= 1.0
    assert cap.task_score == task.value and TASK in cap.source


def test_the_evaluate_stage_fails_in_one_line_on_an_unknown_task(
    lm_eval: object, base: Path, tmp_path: Path
) -> None:
    from selfmoa.stages.base import StageError
    from selfmoa.stages.capability import lm_eval_capability

    ctx = _stage_ctx(tmp_path, {"tasks": ["no_such_task_xyz"], "includePath": str(TASKS)})
    with pytest.raises(StageError) as e:
        lm_eval_capability(ctx, None)  # type: ignore[arg-type]
    assert str(e.value).startswith("evaluation.lmEval: unknown lm-eval task")
    assert "no_such_task_xyz" in str(e.value) and "\n" not in str(e.value)
