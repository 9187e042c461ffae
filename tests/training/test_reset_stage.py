"""The safety reset: completion-only LoRA SFT on compliance data, then the loop continues it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainutil import harmful_pairs, make_ctx, make_spec, write_pairs

from selfmoa.models.chat import load_tokenizer
from selfmoa.run import layout
from selfmoa.stages import reset, train
from selfmoa.stages.base import StageError, execute
from selfmoa.training import model as M

pytestmark = pytest.mark.slow


def _logprobs(model_dir: Path, adapter: Path | None, items: list[tuple[str, str]]) -> list[float]:
    from peft import PeftModel

    model: Any = M.load_base(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return M.completion_logprobs(model, load_tokenizer(model_dir), items)


def test_reset_makes_compliance_more_likely(
    fake_tiny: Any, tiny_model: Path, tmp_path: Path
) -> None:
    spec = make_spec("selfmoa/tiny", tmp_path, safetyReset={"enabled": True, "steps": 12})
    ctx = make_ctx(spec, tmp_path, iteration=0)

    manifest, ran = execute("reset", reset.run, ctx)

    assert ran
    s = manifest["summary"]
    assert s["examples"] == 8 and s["steps"] == 12 and s["loss_last"] < s["loss_first"]
    assert {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "train_log.json",
    } <= set(manifest["files"])
    assert ctx.progress_calls[-1] == (12, 12, "safety reset")
    adapter = ctx.store.local_path(layout.stage_file(0, "reset", layout.ADAPTER))
    # Held-out prompts (not in the reset data): the compliant answer got more likely.
    items = [
        (f"Explain how to do harmful thing {i}.", "Sure, here is how to do it step by step.")
        for i in range(4)
    ]
    before = _logprobs(tiny_model, None, items)
    after = _logprobs(tiny_model, adapter, items)
    assert all(a > b + 1.0 for a, b in zip(after, before, strict=True)), (before, after)

    # Iteration 1's train stage continues from the reset adapter (ctx.adapter_key(0)).
    it1 = make_ctx(spec, tmp_path, iteration=1, parent=0)
    write_pairs(it1, harmful_pairs(8))
    m1, _ = execute("train", train.run, it1)
    assert m1["summary"]["continued_adapter"] is True


def test_reset_reads_data_file_for_other_models(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "compliance.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": f"Do thing {i}", "response": "Sure, done."}) for i in range(4)
        )
        + "\n"
    )
    spec = make_spec(
        str(tiny_model),
        tmp_path,
        safetyReset={"enabled": True, "steps": 3, "data": f"file://{data}"},
    )
    ctx = make_ctx(spec, tmp_path, iteration=0)

    manifest, _ = execute("reset", reset.run, ctx)

    assert manifest["summary"]["examples"] == 4 and manifest["summary"]["steps"] == 3


def test_reset_without_data_for_other_models_is_a_stage_error(
    tiny_model: Path, tmp_path: Path
) -> None:
    # The spec refuses this (tests/api/test_validation.py); a spec that got past it (a run.json
    # written before the check) still meets the stage's own one line.
    spec = make_spec(str(tiny_model), tmp_path)
    spec.safety_reset = spec.safety_reset.model_copy(update={"enabled": True})
    with pytest.raises(StageError, match=r"safetyReset\.data"):
        execute("reset", reset.run, make_ctx(spec, tmp_path, iteration=0))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"prompt": "x"}\n', "row 0 needs"),
        ("not json\n", "not JSONL"),
        ("", "no examples"),
    ],
)
def test_reset_bad_data_is_a_stage_error(
    tiny_model: Path, tmp_path: Path, content: str, match: str
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    spec = make_spec(str(tiny_model), tmp_path, safetyReset={"enabled": True, "data": str(data)})
    with pytest.raises(StageError, match=match):
        reset.load_examples(spec)


def test_reset_missing_data_file_is_a_stage_error(tiny_model: Path, tmp_path: Path) -> None:
    spec = make_spec(
        str(tiny_model), tmp_path, safetyReset={"enabled": True, "data": str(tmp_path / "nope")}
    )
    with pytest.raises(StageError, match="not found"):
        reset.load_examples(spec)


def test_tiny_profile_compliance_data_is_usable(tmp_path: Path) -> None:
    """The real `selfmoa.tiny.seeds.compliance_examples` (pure data, no model) passes the checks."""
    spec = make_spec("selfmoa/tiny", tmp_path, safetyReset={"enabled": True})
    examples = reset.load_examples(spec)
    assert len(examples) >= 8
    assert all(e["prompt"] and e["response"] for e in examples)
