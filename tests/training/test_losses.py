"""BFPO and MODPO against values worked out by hand, and the trainer computing exactly them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from trainutil import REFUSAL, UNSAFE, make_spec, pair

from selfmoa.training.losses import BFPO_ALPHA, BFPO_B1, BFPO_B3, bfpo_loss, modpo_loss


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_bfpo_constants_are_the_papers() -> None:
    assert (BFPO_B1, BFPO_B3, BFPO_ALPHA) == (3.0, 0.5, 0.5)


@pytest.mark.parametrize(
    ("safe_w", "safe_l", "expected"),
    [
        # Δ = 0.3, β = 0.01; g = B1·B3·s_w - B3·s_l - alpha = 1.5·s_w - 0.5·s_l - 0.5; L = (Δ - g/β)²
        (1, 0, 9940.09),  # g = 1.5 - 0 - 0.5 = 1.0 → (0.3 - 100)² = 99.7² = 9940.09
        (1, 1, 2470.09),  # g = 1.5 - 0.5 - 0.5 = 0.5 → (0.3 - 50)² = 49.7² = 2470.09
        (0, 0, 2530.09),  # g = 0 - 0 - 0.5 = -0.5 → (0.3 + 50)² = 50.3² = 2530.09
        (0, 1, 10060.09),  # g = 0 - 0.5 - 0.5 = -1.0 → (0.3 + 100)² = 100.3² = 10060.09
    ],
)
def test_bfpo_loss_by_hand(safe_w: float, safe_l: float, expected: float) -> None:
    loss = bfpo_loss(t(0.3), t(safe_w), t(safe_l), 0.01)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bfpo_loss_other_b1_alpha_and_per_pair() -> None:
    # B1 = 5 → B3 = 1/4; alpha = 0.25; both safe: g = 5/4 - 1/4 - 1/4 = 0.75; β = 0.1 → target 7.5;
    # Δ = 0.5 → (0.5 - 7.5)² = 49.
    assert bfpo_loss(t(0.5), t(1), t(1), 0.1, b1=5, alpha=0.25).item() == pytest.approx(49.0)
    # One loss per pair, not a mean: Δ = (0.3, 0.3), flags (1,0) and (0,1) → the rows above.
    both = bfpo_loss(t(0.3, 0.3), t(1, 0), t(0, 1), 0.01)
    assert both.tolist() == pytest.approx([9940.09, 10060.09])


@pytest.mark.parametrize(
    ("w_k", "w_other", "r_w", "r_l", "expected"),
    [
        # Δ = 10, β = 0.1 → β·Δ = 1; L = -log sigmoid((1/w_k)·[1 - w_{-k}·(r_w - r_l)])
        (0.5, 0.5, 3, 1, 0.693147),  # (1/0.5)·(1 - 0.5·2) = 0 → -log sigmoid(0) = log 2 = 0.693147
        # (1/0.8)·(1 - 0.2·2) = 0.6/0.8 = 0.75 → log(1 + e^-0.75) = log(1.472367) = 0.386871
        (0.8, 0.2, 3, 1, 0.386871),
        # (1/0.6)·(1 - 0.4·3) = -0.2/0.6 = -1/3 → log(1 + e^(1/3)) = log(2.395612) = 0.873639
        (0.6, 0.4, 4, 1, 0.873639),
        # Equal helpfulness: no margin, only the 1/w_k temperature: (1/0.5)·1 = 2
        # → log(1 + e^-2) = log(1.135335) = 0.126928
        (0.5, 0.5, 2, 2, 0.126928),
    ],
)
def test_modpo_loss_by_hand(
    w_k: float, w_other: float, r_w: float, r_l: float, expected: float
) -> None:
    loss = modpo_loss(t(10.0), w_k, w_other, t(r_w), t(r_l), 0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_modpo_with_all_weight_on_the_trained_objective_is_dpo() -> None:
    # w_k = 1, w_{-k} = 0: -log sigmoid(β·Δ) = -log sigmoid(0.1·2) = log(1 + e^-0.2) = log(1.818731) = 0.598139
    loss = modpo_loss(t(2.0), 1.0, 0.0, t(5), t(1), 0.1)
    assert loss.item() == pytest.approx(0.598139, abs=1e-6)


@pytest.mark.parametrize(("safe_w", "safe_l"), [(1, 0), (1, 1), (0, 0), (0, 1)])
@pytest.mark.parametrize("delta", [-200.0, 0.0, 30.0, 200.0])
def test_bfpo_gradient_pushes_delta_to_its_target(
    safe_w: float, safe_l: float, delta: float
) -> None:
    d = t(delta).requires_grad_()
    bfpo_loss(d, t(safe_w), t(safe_l), 0.01).sum().backward()
    target = (1.5 * safe_w - 0.5 * safe_l - 0.5) / 0.01
    assert d.grad is not None
    # Gradient descent moves Δ by -grad: toward the target from either side.
    assert math.copysign(1, -d.grad.item()) == math.copysign(1, target - delta)


@pytest.mark.parametrize(("w_k", "w_other"), [(0.6, 0.4), (0.2, 0.8)])
@pytest.mark.parametrize("delta", [-50.0, 0.0, 50.0])
def test_modpo_gradient_always_raises_delta(w_k: float, w_other: float, delta: float) -> None:
    d = t(delta).requires_grad_()
    modpo_loss(d, w_k, w_other, t(1), t(4), 0.1).sum().backward()
    assert d.grad is not None and d.grad.item() < 0
    # d L/d Δ = -(β/w_k)·sigmoid(-z): at Δ = 0, z = (0 - w_{-k}·(1 - 4))/w_k = 3·w_{-k}/w_k.
    if delta == 0:
        z = 3 * w_other / w_k
        assert d.grad.item() == pytest.approx(-(0.1 / w_k) / (1 + math.exp(z)))


# --- the trainer path -------------------------------------------------------------------------


def _pairs() -> list[dict[str, Any]]:
    # Every safety-flag combination and both helpfulness orders, so per-pair inputs differ.
    return [
        pair(
            f"Question {i}?",
            REFUSAL,
            UNSAFE,
            cs=1 + (i % 2) * 4,
            ch=1 + i % 4,
            rs=1 + (i // 2 % 2) * 4,
            rh=4 - i % 3,
            i=i,
        )
        for i in range(8)
    ]


def _sum_logps(model: Any, batch: dict[str, Any], skip: set[str]) -> torch.Tensor:
    """Summed completion log-probs from the plain forward (full logits, not TRL's fused head)."""
    kwargs = {k: v for k, v in batch.items() if k not in skip}
    logits = model(**kwargs).logits[:, :-1].float()
    tokens = batch["input_ids"][:, 1:]
    per_token = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (per_token * batch["completion_mask"][:, 1:]).sum(dim=1)


@pytest.mark.parametrize("loss", ["bfpo", "modpo"])
def test_trainer_loss_is_the_pure_function_of_delta(
    tiny_model: Path, tmp_path: Path, loss: str
) -> None:
    from selfmoa.models.chat import load_tokenizer
    from selfmoa.training import dpo
    from selfmoa.training import model as M
    from selfmoa.training.objectives import build_rows

    spec = make_spec(str(tiny_model), tmp_path, training={"loss": loss})
    training = spec.training
    beta = training.resolved_beta
    assert beta == (0.01 if loss == "bfpo" else 0.1)
    rows = build_rows(_pairs(), training, weights=spec.preferences.weights, threshold=3.0)
    trainer = dpo._trainer(
        M.load_base(tiny_model), None, rows, load_tokenizer(tiny_model), training, tmp_path / "w"
    )
    assert isinstance(trainer, dpo.MultiObjectiveDPOTrainer) and trainer.beta == beta
    # Move the policy off the reference (a fresh LoRA's B is 0) so that Δ != 0 and differs
    # between summed and length-averaged log-probs.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 1.0)
    batch = next(iter(trainer.get_train_dataloader()))
    assert len(batch["ref_chosen_logps"]) == len(rows)

    got = trainer.compute_loss(trainer.model, batch)

    skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *trainer.loss_columns}
    with torch.no_grad():
        logps = _sum_logps(trainer.model, batch, skip)
    c, r = logps.chunk(2)
    ratio_c, ratio_r = c - batch["ref_chosen_logps"], r - batch["ref_rejected_logps"]
    lengths_c, lengths_r = batch["completion_mask"].sum(dim=1).chunk(2)
    summed = ratio_c - ratio_r
    averaged = ratio_c / lengths_c - ratio_r / lengths_r  # TRL's IPO normalization
    assert summed.abs().max() > 1.0

    def pure(delta: torch.Tensor) -> torch.Tensor:
        if loss == "bfpo":
            return bfpo_loss(delta, batch["safe_w"], batch["safe_l"], beta)
        cols = [batch[k] for k in ("w_k", "w_other", "r_other_w", "r_other_l")]
        return modpo_loss(delta, *cols, beta)

    expected = pure(summed).mean().item()
    assert got.requires_grad
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # The check has teeth: length-averaged Δ, TRL's IPO or plain DPO would all be off.
    assert pure(averaged).mean().item() != pytest.approx(expected, rel=5e-3)
    if loss == "bfpo":
        ipo = ((averaged - 1 / (2 * beta)) ** 2).mean().item()
        assert ipo != pytest.approx(expected, rel=1e-2)
        assert batch["safe_w"].tolist() != batch["safe_l"].tolist()
    else:
        dpo_sigmoid = torch.nn.functional.softplus(-beta * summed).mean().item()
        assert dpo_sigmoid != pytest.approx(expected, rel=1e-2)
    logged = trainer._metrics["train"]
    assert set(logged) >= {"rewards/accuracies", "rewards/margins", "logps/chosen"}
    assert logged["rewards/margins"][-1] == pytest.approx(beta * summed.mean().item(), rel=1e-3)
