"""The opening anchor (`training.openingAnchor`): a forward KL from the reference to the policy at
the first answer tokens of fair prompts.

Why: on SmolLM2-135M-Instruct, iterations that halved attack success raised the perplexity of
held-out reference answers by ~11%, all of it in the first ~10 answer tokens. DPO sharpens how
answers open: mass moves to the policy's common openings and off the reference's rarer ones. The
forward KL, KL(p_ref || p_θ) = Σ_v p_ref(v)·(log p_ref(v) - log p_θ(v)), is mass-covering: it
grows wherever the policy drops what the reference gives weight to. Averaged over the anchored
positions of a batch (a short answer contributes fewer), times `weight`, it joins the loss
(`dpo_trainers.OpeningAnchorDPOTrainer`).

TRL's own forward scores the labels through a fused LM head and never holds the distributions, so
the anchor takes two more forwards: the policy's (with grad) and the reference's, over each
anchored row's prompt and first `tokens` answer tokens only. `openings` lays those out so that
the positions that predict the anchored tokens are the last columns of every row, and only they
go through the LM head (`logits_to_keep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Openings:
    """Rows of prompt + first answer tokens, left-padded so that every row's first answer token
    would sit in the same column: the logits that predict the anchored tokens are the last
    `width` columns of each row. Positions count from each row's first real token, as in the
    right-padded batch they come from."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    #: (rows, width): whether the k-th kept column predicts a real answer token (k < its length).
    anchored: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.anchored.size(1))


def openings(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    tokens: int,
) -> Openings:
    """The openings of a padded batch (either side) of prompt + answer rows, `completion_mask`
    marking the answer: the prompt and the first `tokens` - 1 answer tokens as inputs (the last
    anchored token is only predicted), nothing after them."""
    first = _first_one(attention_mask)
    start = _first_one(completion_mask)
    length = completion_mask.sum(dim=1).clamp(max=tokens)
    width = int(length.max())
    if width < 1:
        raise ValueError("openings: no row has an answer token")
    lead = int((start - first).max())
    cols = torch.arange(lead + width - 1, device=input_ids.device)
    # Column j of row i holds token start_i - lead + j of the batch row.
    src = start[:, None] - lead + cols[None, :]
    real = (src >= first[:, None]) & (src < (start + length - 1)[:, None])
    k = torch.arange(width, device=input_ids.device)[None, :]
    # Kept column k predicts answer token k from token start-1+k, which must be a real one.
    anchored = (k < length[:, None]) & (start[:, None] - 1 + k >= first[:, None])
    return Openings(
        input_ids=input_ids.gather(1, src.clamp(0, input_ids.size(1) - 1)),
        attention_mask=real.long(),
        position_ids=(src - first[:, None]).clamp(min=0),
        anchored=anchored,
    )


def opening_logits(model: Any, o: Openings) -> torch.Tensor:
    """(rows, width, vocab): the logits at the columns that predict the anchored tokens. The
    model's plain forward (not TRL's fused head), with only those columns projected."""
    out = model(
        input_ids=o.input_ids,
        attention_mask=o.attention_mask,
        position_ids=o.position_ids,
        use_cache=False,
        logits_to_keep=o.width,
    )
    logits: torch.Tensor = out.logits[:, -o.width :]
    return logits


def forward_kl(
    ref_logits: torch.Tensor, logits: torch.Tensor, anchored: torch.Tensor
) -> torch.Tensor:
    """KL(p_ref || p) over the whole vocabulary at each anchored position (1-D, float32)."""
    ref = ref_logits[anchored].float().log_softmax(dim=-1)
    policy = logits[anchored].float().log_softmax(dim=-1)
    return (ref.exp() * (ref - policy)).sum(dim=-1)


def _first_one(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the column of the first 1 (0 for a row without one)."""
    return mask.int().argmax(dim=1)
