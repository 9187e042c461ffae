"""What makes CPU training of a real model affordable: completions-only scoring of the LM head,
and LoRA on the last layers only. Both must leave the training itself as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainutil import harmful_pairs, make_spec

from selfmoa.api.spec import LoraSpec
from selfmoa.models.chat import load_tokenizer
from selfmoa.training import dpo as D
from selfmoa.training import model as M
from selfmoa.training.objectives import build_rows

pytestmark = pytest.mark.slow


def _trainer(tiny_model: Path, tmp_path: Path) -> Any:
    spec = make_spec(str(tiny_model), tmp_path)
    rows = build_rows(
        harmful_pairs(8), spec.training, weights=spec.preferences.weights, threshold=3.0
    )
    tok = load_tokenizer(tiny_model)
    base = M.load_base(tiny_model)
    return D._trainer(base, None, rows, tok, spec.training, tmp_path / "t", None)


def test_scoring_only_completions_gives_the_same_loss(tiny_model: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        full = trainer.compute_loss(trainer.model, batch)
        with D.scored_completions_only():
            compact = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(full) and float(compact) == pytest.approx(float(full), rel=1e-5)
    # The TRL hook is restored afterwards.
    from trl.trainer import utils as trl_utils

    assert trl_utils._use_triton(torch.device("cpu")) is False


def test_lora_on_the_last_layers_only(tiny_model: Path) -> None:
    base = M.load_base(tiny_model)
    model = M.load_policy(base, None, LoraSpec(r=4, alpha=8, top_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".layers.1." in n for n in trained)
    # Every linear module of that layer, never the LM head.
    kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
    assert kinds == set(M.linear_module_names(base)) and "lm_head" not in kinds
