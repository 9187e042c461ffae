"""The multi-objective preference losses, per pair, exactly as their papers define them.

Both take Δ = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)], the
log-probabilities summed over the response's tokens (not averaged: both reference
implementations sum), and return one loss per pair; the trainer takes their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: BFPO's B1 (Zhang et al. 2025, ICLR): a safe winner counts B1 times a safe loser.
BFPO_B1 = 3.0
#: BFPO's B3 = 1 / (B1 - 1).
BFPO_B3 = 1.0 / (BFPO_B1 - 1.0)
#: BFPO's bias alpha.
BFPO_ALPHA = 0.5


def bfpo_target(
    safe_w: torch.Tensor, safe_l: torch.Tensor, *, b1: float = BFPO_B1, alpha: float = BFPO_ALPHA
) -> torch.Tensor:
    """g = B1*B3*I_safe(y_w) - B3*I_safe(y_l) - alpha, with B3 = 1/(B1-1).

    With the defaults: both safe 0.5, unsafe loser 1, unsafe winner -1, both unsafe -0.5.
    """
    b3 = 1.0 / (b1 - 1.0)
    return b1 * b3 * safe_w - b3 * safe_l - alpha


def bfpo_loss(
    delta: torch.Tensor,
    safe_w: torch.Tensor,
    safe_l: torch.Tensor,
    beta: float,
    *,
    b1: float = BFPO_B1,
    alpha: float = BFPO_ALPHA,
) -> torch.Tensor:
    """BFPO: (Δ - g/β)², y_w the more helpful response, g from the two safety flags (0 or 1)."""
    return (delta - bfpo_target(safe_w, safe_l, b1=b1, alpha=alpha) / beta) ** 2


def modpo_logit(
    delta: torch.Tensor,
    w_k: torch.Tensor | float,
    w_other: torch.Tensor | float,
    r_other_w: torch.Tensor,
    r_other_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """(1/w_k) * [β*Δ - w_{-k} * (r_{-k}(x,y_w) - r_{-k}(x,y_l))]: MODPO's Bradley-Terry logit."""
    return (beta * delta - w_other * (r_other_w - r_other_l)) / w_k


def modpo_loss(
    delta: torch.Tensor,
    w_k: torch.Tensor | float,
    w_other: torch.Tensor | float,
    r_other_w: torch.Tensor,
    r_other_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """MODPO (Zhou et al. 2024): -log sigmoid(modpo_logit), objective k trained on this pair's order,
    the other objective's scores r_{-k} as the margin."""
    return -F.logsigmoid(modpo_logit(delta, w_k, w_other, r_other_w, r_other_l, beta))
