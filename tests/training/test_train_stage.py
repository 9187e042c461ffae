"""The train stage on a tiny random Qwen2: real TRL DPOTrainer + PEFT code paths on CPU."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from trainutil import REFUSAL, UNSAFE, harmful_pairs, make_ctx, make_spec, pair, write_pairs

from selfmoa.models.chat import load_tokenizer
from selfmoa.run import layout
from selfmoa.stages import train
from selfmoa.stages.base import StageError, execute
from selfmoa.training import model as M

pytestmark = pytest.mark.slow


def _adapter_dir(ctx: Any, k: int, name: str = layout.ADAPTER) -> Path:
    path = ctx.store.local_path(layout.stage_file(k, "train", name))
    assert path is not None and (path / "adapter_config.json").is_file()
    return Path(path)


def _margins(model_dir: Path, adapter: Path | None, pairs: list[dict[str, Any]]) -> list[float]:
    """log p(chosen|prompt) - log p(rejected|prompt) per pair, on base (+ adapter)."""
    from peft import PeftModel

    tok = load_tokenizer(model_dir)
    model: Any = M.load_base(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    lp_c = M.completion_logprobs(model, tok, [(p["prompt"], p["chosen"]) for p in pairs])
    lp_r = M.completion_logprobs(model, tok, [(p["prompt"], p["rejected"]) for p in pairs])
    return [c - r for c, r in zip(lp_c, lp_r, strict=True)]


def _logits(model: Any, model_dir: Path) -> torch.Tensor:
    tok = load_tokenizer(model_dir)
    ids = tok(M.prompt_text(tok, "How do I bake bread?") + REFUSAL, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids["input_ids"]).logits.float()


def test_dpo_moves_policy_toward_chosen(tiny_model: Path, tmp_path: Path) -> None:
    spec = make_spec(str(tiny_model), tmp_path)
    ctx = make_ctx(spec, tmp_path)
    pairs = harmful_pairs(32)
    write_pairs(ctx, pairs)

    manifest, ran = execute("train", train.run, ctx)

    assert ran
    s = manifest["summary"]
    assert s["trained"] and s["pairs"] == 32 and s["steps"] == 4 and s["loss"] == "dpo"
    assert s["tokens"] > 32 * 3 and s["final_loss"] < math.log(2)
    assert s["reward_accuracy"] == pytest.approx(1.0)
    assert not s["continued_adapter"]
    files = manifest["files"]
    assert {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "train_log.json",
    } <= set(files)
    assert not any("ref" in f.split("/") for f in files)  # TRL's frozen copy never uploaded
    log = ctx.store.read_json(layout.stage_file(1, "train", "train_log.json"))
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference = starting policy
    assert ctx.progress_calls[0] == (0, 4, "training") and ctx.progress_calls[-1] == (
        4,
        4,
        "training",
    )

    before = _margins(tiny_model, None, pairs[:8])
    after = _margins(tiny_model, _adapter_dir(ctx, 1), pairs[:8])
    # Every pair: chosen became more likely relative to rejected, by several nats.
    assert all(a > b + 1.0 for a, b in zip(after, before, strict=True)), (before, after)

    # Done stages are skipped; the same inputs on a fresh store give the same adapter bytes.
    assert execute("train", train.run, ctx)[1] is False
    spec2 = make_spec(str(tiny_model), tmp_path / "again")
    ctx2 = make_ctx(spec2, tmp_path / "again")
    write_pairs(ctx2, pairs)
    again, _ = execute("train", train.run, ctx2)
    key = "adapter/adapter_model.safetensors"
    assert again["files"][key]["sha256"] == files[key]["sha256"]


def test_continue_from_parent_adapter(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(str(tiny_model), tmp_path)
    first = make_ctx(spec, tmp_path, iteration=1, parent=0)
    pairs = harmful_pairs(16)
    write_pairs(first, pairs)
    execute("train", train.run, first)

    # Keep the trainer's own logits at save time, to compare with the uploaded adapter.
    seen: dict[str, torch.Tensor] = {}
    real_save = M.save_adapter

    def spy(model: Any, dest: Path) -> Path:
        assert set(model.peft_config) == {"default", "ref"}  # TRL's reference copy of the parent
        assert model.active_adapter == "default"
        seen["logits"] = _logits(model, tiny_model)
        return real_save(model, dest)

    monkeypatch.setattr(M, "save_adapter", spy)
    second = make_ctx(spec, tmp_path, iteration=2, parent=1)
    write_pairs(second, pairs)
    manifest, _ = execute("train", train.run, second)

    s = manifest["summary"]
    assert s["continued_adapter"] and s["parent"] == 1
    log = second.store.read_json(layout.stage_file(2, "train", "train_log.json"))
    # The reference is the parent (the policy at the start of the iteration), not the base:
    # at the first step policy == reference, so the DPO loss is exactly log 2.
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)

    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(M.load_base(tiny_model), str(_adapter_dir(second, 2)))
    assert list(reloaded.peft_config) == ["default"]
    torch.testing.assert_close(_logits(reloaded, tiny_model), seen["logits"], atol=1e-5, rtol=1e-5)
    # Training went on from the parent: further along than iteration 1.
    m1 = _margins(tiny_model, _adapter_dir(first, 1), pairs[:4])
    m2 = _margins(tiny_model, _adapter_dir(second, 2), pairs[:4])
    assert sum(m2) > sum(m1)


def _kind_pairs() -> list[dict[str, Any]]:
    # Varied scores so the MODPO margins and BFPO targets differ across pairs.
    return [
        pair(
            f"Question {i}?",
            REFUSAL,
            UNSAFE,
            cs=5,
            ch=1 + i % 4,
            rs=1 + (i % 2) * 4,
            rh=4 - i % 3,
            i=i,
        )
        for i in range(8)
    ]


@pytest.mark.parametrize("loss", ["weighted", "modpo", "bfpo"])
def test_each_loss_kind_trains(tiny_model: Path, tmp_path: Path, loss: str) -> None:
    from selfmoa.training.objectives import build_rows

    training: dict[str, Any] = {"loss": loss, "beta": 0.5}
    if loss == "weighted":
        training |= {"lossTypes": ["sigmoid", "sft"], "lossWeights": [1.0, 0.5]}
    spec = make_spec(str(tiny_model), tmp_path, training=training)
    ctx = make_ctx(spec, tmp_path)
    pairs = _kind_pairs()
    write_pairs(ctx, pairs)

    manifest, _ = execute("train", train.run, ctx)

    s = manifest["summary"]
    assert s["loss"] == loss and s["steps"] == 1 and s["trained"]
    first = ctx.store.read_json(layout.stage_file(1, "train", "train_log.json"))[0]["loss"]
    rows = build_rows(pairs, spec.training, weights=spec.preferences.weights, threshold=3.0)
    beta = spec.training.resolved_beta
    # At step 1 the policy equals the reference (delta = 0): the first loss is the paper's at 0.
    if loss in ("modpo", "bfpo"):
        from selfmoa.training.losses import bfpo_loss, modpo_loss

        col = {k: torch.tensor([r.columns()[k] for r in rows]) for k in rows[0].columns()}
        zero = torch.zeros(len(rows))
        if loss == "modpo":
            per_pair = modpo_loss(
                zero, col["w_k"], col["w_other"], col["r_other_w"], col["r_other_l"], beta
            )
        else:
            per_pair = bfpo_loss(zero, col["safe_w"], col["safe_l"], beta)  # (g/beta)^2
        assert len(set(per_pair.tolist())) > 1
        assert first == pytest.approx(per_pair.mean().item(), rel=1e-4)
    else:
        assert first > math.log(2)  # sigmoid's log 2 plus the SFT term


def test_zero_pairs_from_base_is_an_identity_adapter(tiny_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    spec = make_spec(str(tiny_model), tmp_path)
    ctx = make_ctx(spec, tmp_path)
    write_pairs(ctx, [])

    manifest, _ = execute("train", train.run, ctx)

    s = manifest["summary"]
    assert s["trained"] is False and s["pairs"] == 0 and s["steps"] == 0 and s["note"]
    reloaded = PeftModel.from_pretrained(M.load_base(tiny_model), str(_adapter_dir(ctx, 1)))
    torch.testing.assert_close(
        _logits(reloaded, tiny_model), _logits(M.load_base(tiny_model), tiny_model)
    )


def test_zero_pairs_keeps_the_parent_adapter(tiny_model: Path, tmp_path: Path) -> None:
    spec = make_spec(str(tiny_model), tmp_path)
    first = make_ctx(spec, tmp_path, iteration=1)
    write_pairs(first, harmful_pairs(8))
    m1, _ = execute("train", train.run, first)
    second = make_ctx(spec, tmp_path, iteration=2, parent=1)
    write_pairs(second, [])

    m2, _ = execute("train", train.run, second)

    assert m2["summary"]["trained"] is False and m2["summary"]["continued_adapter"]
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert m2["files"][name]["sha256"] == m1["files"][name]["sha256"]


def test_ceiling_adapter_trained_on_gold_pairs(fake_tiny: Any, tmp_path: Path) -> None:
    spec = make_spec("selfmoa/tiny", tmp_path, evaluation={"goldJudge": True, "ceiling": True})
    ctx = make_ctx(spec, tmp_path)
    weak = harmful_pairs(8)
    gold = [pair(p["prompt"], p["chosen"], "No.", i=i) for i, p in enumerate(weak)]
    write_pairs(ctx, weak, gold=gold)

    manifest, _ = execute("train", train.run, ctx)

    files = manifest["files"]
    assert "ceiling-adapter/adapter_model.safetensors" in files and "ceiling_log.json" in files
    assert manifest["summary"]["ceiling"]["pairs"] == 8
    assert (
        files["ceiling-adapter/adapter_model.safetensors"]["sha256"]
        != files["adapter/adapter_model.safetensors"]["sha256"]
    )
    assert {d for _, _, d in ctx.progress_calls} == {"training", "training ceiling"}


def test_ceiling_without_gold_pairs_is_a_stage_error(fake_tiny: Any, tmp_path: Path) -> None:
    spec = make_spec("selfmoa/tiny", tmp_path, evaluation={"goldJudge": True, "ceiling": True})
    ctx = make_ctx(spec, tmp_path)
    write_pairs(ctx, [])
    with pytest.raises(StageError, match=r"gold-pairs\.jsonl"):
        execute("train", train.run, ctx)


def test_missing_pairs_is_a_stage_error(tiny_model: Path, tmp_path: Path) -> None:
    ctx = make_ctx(make_spec(str(tiny_model), tmp_path), tmp_path)
    with pytest.raises(StageError, match="'pairs'"):
        execute("train", train.run, ctx)


def test_pairs_with_overlong_prompts_are_dropped_not_fatal(
    tiny_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(str(tiny_model), tmp_path, training={"maxLength": 48})
    ctx = make_ctx(spec, tmp_path)
    long = [pair("word " * 40 + f"{i}?", REFUSAL, UNSAFE, i=i) for i in range(3)]
    write_pairs(ctx, [*long, *harmful_pairs(2)])

    s = execute("train", train.run, ctx)[0]["summary"]

    assert (s["pairs"], s["dropped_pairs"], s["trained"]) == (2, 3, True)

    only_long = make_ctx(spec, tmp_path / "b", iteration=2, parent=1)
    write_pairs(only_long, long)
    s2 = execute("train", train.run, only_long)[0]["summary"]
    assert (s2["pairs"], s2["dropped_pairs"], s2["trained"]) == (0, 3, False)
    assert "maxLength" in s2["note"]
