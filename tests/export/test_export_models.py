"""Exports load and generate: the adapter with PEFT on the tiny base, the merged model with
transformers alone, with the merged logits equal to base + adapter."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from exportutil import PROMPT, BuiltRun, build_run, front_matter, logits

from selfmoa.export import export_run
from selfmoa.models.chat import load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltRun:
    return build_run(tmp_path_factory.mktemp("export-models") / "store", tiny_model)


def _base(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model))


def _generate(model: Any, tok: Any) -> list[int]:
    import torch

    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
        )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    assert len(new) >= 1
    return [int(t) for t in new]


def test_adapter_export_loads_with_peft_and_generates(
    demo_run: BuiltRun, tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    export_run(demo_run.uri, str(tmp_path / "out"))
    tok = load_tokenizer(tiny_model)

    model = PeftModel.from_pretrained(_base(tiny_model), str(tmp_path / "out"))
    _generate(model, tok)

    # It is iteration 1's adapter as the run stored it, and it changes the base's outputs.
    stored = PeftModel.from_pretrained(_base(tiny_model), str(demo_run.stored_adapter(1)))
    assert torch.equal(logits(model, tok), logits(stored, tok))
    assert not torch.allclose(logits(model, tok), logits(_base(tiny_model), tok), atol=1e-3)


def test_merged_export_loads_alone_and_matches_base_plus_adapter(
    demo_run: BuiltRun,
    tiny_model: Path,
    tmp_path: Path,
    fake_tiny: types.ModuleType,
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    said: list[str] = []
    result = export_run(demo_run.uri, str(tmp_path / "merged"), merge=True, progress=said.append)

    assert result.merged and result.iteration == 1
    out = tmp_path / "merged"
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    tok = load_tokenizer(out)
    _generate(merged, tok)

    reference = PeftModel.from_pretrained(_base(tiny_model), str(demo_run.stored_adapter(1)))
    got, want = logits(merged, tok), logits(reference, tok)
    assert (got - want).abs().max().item() < 1e-4
    assert not torch.allclose(got, logits(_base(tiny_model), tok), atol=1e-3)

    meta, _ = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "merged" in meta["tags"]
    assert any(s.startswith("loading the base model") for s in said)
    assert any(s.startswith("applying the adapter") for s in said)
    assert any(s.startswith("saving the merged model") for s in said)


def test_merged_starting_point_without_reset_is_the_base(
    tiny_model: Path, tmp_path: Path, fake_tiny: types.ModuleType
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    built = build_run(tmp_path / "store", tiny_model, asr=(0.2, 0.4))

    result = export_run(built.uri, str(tmp_path / "out"), merge=True)

    assert result.iteration == 0 and result.adapter is None
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    tok = load_tokenizer(tmp_path / "out")
    assert torch.equal(logits(model, tok), logits(_base(tiny_model), tok))
    body = (tmp_path / "out" / "README.md").read_text()
    assert "this is the base model itself" in body
