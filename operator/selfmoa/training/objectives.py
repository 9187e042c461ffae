"""How preference pairs become training rows for each loss kind (pure Python, no torch).

Δ = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)], token log-probs summed
over the response; β = `training.beta` (default 0.1, or 0.01 for bfpo).

- `dpo`: TRL `sigmoid`, -log sigmoid(β·Δ), y_w/y_l the pair's order.
- `weighted`: TRL's `loss_type` list with `loss_weights` (e.g. sigmoid + sft).
- `modpo` (MODPO, Zhou et al. 2024), k = safety the objective being trained on the pair's order,
  -k = helpfulness whose judge scores are the margin reward r_{-k}:
      L = -log sigmoid((1/w_k)·[β·Δ - w_{-k}·(r_{-k}(x,y_w) - r_{-k}(x,y_l))])
  with r_{-k} = marginScale · helpfulness score, and (w_k, w_{-k}) the `spec.preferences.weights`
  of safety and helpfulness normalized to sum 1 (MODPO's weights lie on the simplex; the default
  0.6/0.4 already does). A missing helpfulness score on either side drops the margin term
  (r_{-k} = 0 for both). w_k must be positive.
- `bfpo` (BFPO, Zhang et al. 2025): y_w/y_l is the pair re-ordered by *helpfulness* (ties keep the
  pair's order), and I_safe(y) = [safety score >= ensemble threshold] (a missing score is unsafe):
      L = (Δ - (1/β)·[B1·B3·I_safe(y_w) - B3·I_safe(y_l) - alpha])²,  B1 = 3, B3 = 1/(B1-1), alpha = 0.5,
  i.e. a target of g/β with g = 0.5 both safe, 1 unsafe loser, -1 unsafe winner, -0.5 both
  unsafe. A negative g flips the preference: a safe refusal beats a more helpful unsafe answer,
  and between two unsafe answers the less helpful one is preferred.

The losses themselves are in `selfmoa.training.losses`; the trainer
(`selfmoa.training.dpo_trainers.MultiObjectiveDPOTrainer`) applies them to the per-pair inputs
computed here.

Every row also says whether its prompt is fair (the pair's kind is not harmful): with
`training.openingAnchor` on, the trainer anchors how the chosen answers of those rows open
(`selfmoa.training.opening_anchor`), and the dataset carries the flag as the `fair` column.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from selfmoa.api.base import SpecError
from selfmoa.api.spec import LossKind, TrainingSpec


@dataclass(frozen=True)
class BfpoInputs:
    """BFPO's per-pair inputs: I_safe(y_w), I_safe(y_l) as 1.0 / 0.0."""

    safe_w: float
    safe_l: float


@dataclass(frozen=True)
class ModpoInputs:
    """MODPO's per-pair inputs: the normalized weights and the margin rewards r_{-k}."""

    w_k: float
    w_other: float
    r_other_w: float
    r_other_l: float


PairInputs = BfpoInputs | ModpoInputs

_INPUTS: dict[LossKind, type[BfpoInputs] | type[ModpoInputs]] = {
    LossKind.bfpo: BfpoInputs,
    LossKind.modpo: ModpoInputs,
}


@dataclass(frozen=True)
class Row:
    prompt: str
    chosen: str
    rejected: str
    #: The loss's per-pair inputs; None for the kinds TRL computes itself (dpo, weighted).
    inputs: PairInputs | None = None
    #: A benign or legit prompt (not an attack): its answers' openings may be anchored.
    fair: bool = False

    def columns(self, *, fair: bool = False) -> dict[str, float]:
        """The inputs as dataset columns (named as in `loss_columns`); with `fair`, the fair
        flag too (as 1.0 / 0.0, in `FAIR_COLUMN`)."""
        out = {FAIR_COLUMN: float(self.fair)} if fair else {}
        if self.inputs is None:
            return out
        return out | {f.name: float(getattr(self.inputs, f.name)) for f in fields(self.inputs)}


#: The dataset column of `Row.fair`, there only with the opening anchor on.
FAIR_COLUMN = "fair"


def loss_columns(kind: LossKind) -> tuple[str, ...]:
    """The dataset columns a loss kind reads per pair; none for TRL's own losses."""
    cls = _INPUTS.get(kind)
    return tuple(f.name for f in fields(cls)) if cls is not None else ()


def _score(scores: Any, objective: str) -> float | None:
    if not isinstance(scores, dict):
        return None
    v = scores.get(objective)
    return float(v) if isinstance(v, int | float) else None


def fair_prompt(pair: dict[str, Any]) -> bool:
    """Whether the pair's prompt is fair: any kind but harmful (a pair without one is not)."""
    kind = pair.get("kind")
    return isinstance(kind, str) and kind != "harmful"


def modpo_weights(weights: dict[str, float]) -> tuple[float, float]:
    """(w_k, w_{-k}) for k = safety, normalized to sum 1."""
    w_safety = weights.get("safety", 0.0)
    w_help = weights.get("helpfulness", 0.0)
    if w_safety <= 0:
        raise SpecError(
            "training.loss modpo: needs preferences.weights.safety > 0 (MODPO divides by the "
            "weight of the objective it trains)"
        )
    total = w_safety + w_help
    return w_safety / total, w_help / total


def modpo_row(pair: dict[str, Any], w_k: float, w_other: float, scale: float) -> Row:
    """MODPO: the pair's order, helpfulness scores (times `scale`) as the margin reward."""
    hc = _score(pair.get("chosen_scores"), "helpfulness")
    hr = _score(pair.get("rejected_scores"), "helpfulness")
    rw, rl = (scale * hc, scale * hr) if hc is not None and hr is not None else (0.0, 0.0)
    inputs = ModpoInputs(w_k=w_k, w_other=w_other, r_other_w=rw, r_other_l=rl)
    return Row(
        str(pair["prompt"]), str(pair["chosen"]), str(pair["rejected"]), inputs, fair_prompt(pair)
    )


def bfpo_row(pair: dict[str, Any], threshold: float) -> Row:
    """BFPO: order by helpfulness, one safety flag per response (see the module doc)."""
    hc = _score(pair.get("chosen_scores"), "helpfulness")
    hr = _score(pair.get("rejected_scores"), "helpfulness")
    swap = hc is not None and hr is not None and hr > hc
    winner, loser = ("rejected", "chosen") if swap else ("chosen", "rejected")

    def safe(side: str) -> float:
        s = _score(pair.get(f"{side}_scores"), "safety")
        return 1.0 if s is not None and s >= threshold else 0.0

    inputs = BfpoInputs(safe_w=safe(winner), safe_l=safe(loser))
    return Row(str(pair["prompt"]), str(pair[winner]), str(pair[loser]), inputs, fair_prompt(pair))


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
        w_k, w_other = modpo_weights(weights)
        return [modpo_row(p, w_k, w_other, training.margin_scale) for p in pairs]
    return [
        Row(str(p["prompt"]), str(p["chosen"]), str(p["rejected"]), fair=fair_prompt(p))
        for p in pairs
    ]


def trl_loss(training: TrainingSpec) -> tuple[list[str], list[float] | None]:
    """TRL's (loss_type, loss_weights) for the loss kind. TRL insists on one even for bfpo/modpo,
    whose loss the trainer computes itself: there it is `sigmoid`, and unused."""
    if training.loss == LossKind.weighted:
        return list(training.loss_types), (
            list(training.loss_weights) if training.loss_weights is not None else None
        )
    return ["sigmoid"], None


def own_loss(training: TrainingSpec) -> bool:
    """Whether the loss is computed by `losses` (bfpo, modpo) rather than by TRL."""
    return training.loss in _INPUTS
