"""How preference pairs become training rows for each loss kind (pure Python, no torch).

Every loss is written as TRL's DPO loss on (prompt, chosen, rejected) plus, for the two
multi-objective kinds, a per-pair *margin* m (in units of the beta-scaled implicit reward
beta*D, where D = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]):

- `dpo`: TRL `sigmoid`, -log sigma(beta*D). No margin.
- `weighted`: TRL's `loss_type` list with `loss_weights` (e.g. sigmoid + sft). No margin.
- `modpo` (MODPO, Zhou et al. 2023, with safety as the objective being trained and helpfulness
  as the "other" objective whose score is already known): -log sigma(beta*D - m) with
  m = marginScale * (w_help / w_safety) * (help(y_c) - help(y_r)), the weights from
  `spec.preferences.weights`. MODPO's overall 1/w_k temperature is folded into beta. A missing
  helpfulness score gives m = 0.
- `bfpo` (BFPO-style, after Zhang et al. 2024): the pair is re-ordered by *helpfulness*
  (y_hw = the more helpful response; ties keep the pair's order) and the target comes from a
  per-response safety flag s = [safety >= ensemble threshold] (a missing score counts as unsafe):
  g = 1.5*s(y_hw) - 0.5*s(y_hl) - alpha with alpha = 0.5, i.e.
      both safe: g = 0.5   unsafe loser: g = 1   unsafe winner: g = -1   both unsafe: g = -0.5.
  The loss regresses the length-normalized log-ratio difference onto g/beta (TRL's `ipo`, whose
  fixed target 1/(2beta) is g = 0.5, shifted per pair by m = g - 0.5). A negative g flips the
  preference: between two unsafe answers the less helpful one is preferred, and a safe refusal
  beats a more helpful unsafe answer.

The trainer applies m by shifting the precomputed reference log-prob of the chosen response
(`selfmoa.training.dpo.MarginDPOTrainer`); these functions only compute it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfmoa.api.spec import LossKind, TrainingSpec

#: BFPO's bias alpha.
BFPO_ALPHA = 0.5
#: TRL's IPO target corresponds to g = 0.5; BFPO margins are offsets from it.
IPO_TARGET_G = 0.5


@dataclass(frozen=True)
class Row:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


def _score(scores: Any, objective: str) -> float | None:
    if not isinstance(scores, dict):
        return None
    v = scores.get(objective)
    return float(v) if isinstance(v, int | float) else None


def modpo_margin(pair: dict[str, Any], weights: dict[str, float], scale: float) -> float:
    """MODPO margin: the helpfulness difference, weighted against safety."""
    hc = _score(pair.get("chosen_scores"), "helpfulness")
    hr = _score(pair.get("rejected_scores"), "helpfulness")
    if hc is None or hr is None:
        return 0.0
    w_safety = weights.get("safety", 0.0)
    w_help = weights.get("helpfulness", 0.0)
    # With no weight on safety the pair order already is the helpfulness order: no margin.
    ratio = w_help / w_safety if w_safety > 0 else 0.0
    return scale * ratio * (hc - hr)


def bfpo_row(pair: dict[str, Any], threshold: float) -> Row:
    """BFPO: order by helpfulness, target from the two safety flags (see the module doc)."""
    hc = _score(pair.get("chosen_scores"), "helpfulness")
    hr = _score(pair.get("rejected_scores"), "helpfulness")
    swap = hc is not None and hr is not None and hr > hc
    winner, loser = ("rejected", "chosen") if swap else ("chosen", "rejected")

    def safe(side: str) -> float:
        s = _score(pair.get(f"{side}_scores"), "safety")
        return 1.0 if s is not None and s >= threshold else 0.0

    g = 1.5 * safe(winner) - 0.5 * safe(loser) - BFPO_ALPHA
    return Row(str(pair["prompt"]), str(pair[winner]), str(pair[loser]), g - IPO_TARGET_G)


def build_rows(
    pairs: list[dict[str, Any]],
    training: TrainingSpec,
    *,
    weights: dict[str, float],
    threshold: float,
) -> list[Row]:
    """The training rows for `training.loss`."""
    if training.loss == LossKind.bfpo:
        return [bfpo_row(p, threshold) for p in pairs]
    if training.loss == LossKind.modpo:
        return [
            Row(
                str(p["prompt"]),
                str(p["chosen"]),
                str(p["rejected"]),
                modpo_margin(p, weights, training.margin_scale),
            )
            for p in pairs
        ]
    return [Row(str(p["prompt"]), str(p["chosen"]), str(p["rejected"])) for p in pairs]


def trl_loss(training: TrainingSpec) -> tuple[list[str], list[float] | None]:
    """TRL's (loss_type, loss_weights) for the loss kind."""
    if training.loss == LossKind.weighted:
        return list(training.loss_types), (
            list(training.loss_weights) if training.loss_weights is not None else None
        )
    if training.loss == LossKind.bfpo:
        return ["ipo"], None
    return ["sigmoid"], None


def uses_margin(training: TrainingSpec) -> bool:
    return training.loss in (LossKind.bfpo, LossKind.modpo)
