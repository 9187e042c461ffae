"""Combining the weak judges of one objective into one score, and how much they agree.

Pure Python (no numpy): the judge stage calls this once per response and objective, and the
figures are small. Three methods (weak-to-strong study, arXiv 2410.12621):

- soft: weighted mean of the available scores; spread = weighted std across judges.
- hard: weighted majority of the thresholded labels (score >= threshold is "good"); a tie goes to
  the side of the soft score. Score = weighted mean of the *majority side's* scores, so the score
  stays on the judges' 1..5 scale and always agrees with the label (the "fraction good" mapped to
  1..5 would put a 2-of-3 majority of 5s at 3.67 and a 1-of-2 tie anywhere). Spread = std across
  judges, as for soft.
- bootstrap: resample the available votes with replacement B times, seeded from the response id,
  take each resample's weighted mean; score = mean of those, spread = their std (a confidence).

Missing votes (None: the judge could not score) are skipped; no usable vote -> score None.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from selfmoa.api.spec import EnsembleMethod
from selfmoa.judges.base import stable_seed

DEFAULT_BOOTSTRAP_SAMPLES = 200


@dataclass(frozen=True)
class Vote:
    score: float | None
    weight: float = 1.0


@dataclass(frozen=True)
class Combined:
    score: float | None
    label: bool | None
    spread: float | None


NONE = Combined(None, None, None)


def _wmean(votes: Sequence[tuple[float, float]]) -> float:
    total = sum(w for _, w in votes)
    return sum(s * w for s, w in votes) / total


def _wstd(votes: Sequence[tuple[float, float]]) -> float:
    m = _wmean(votes)
    total = sum(w for _, w in votes)
    return math.sqrt(max(0.0, sum(w * (s - m) ** 2 for s, w in votes) / total))


def combine(
    votes: Sequence[Vote],
    method: EnsembleMethod,
    *,
    threshold: float = 3.0,
    bootstrap_samples: int = 0,
    key: str = "",
) -> Combined:
    """One objective's ensemble verdict for one response. `key` seeds the bootstrap."""
    usable = [(float(v.score), v.weight) for v in votes if v.score is not None and v.weight > 0]
    if not usable:
        return NONE
    soft = _wmean(usable)
    if method == EnsembleMethod.soft:
        return Combined(soft, soft >= threshold, _wstd(usable))
    if method == EnsembleMethod.hard:
        good = [(s, w) for s, w in usable if s >= threshold]
        bad = [(s, w) for s, w in usable if s < threshold]
        wg, wb = sum(w for _, w in good), sum(w for _, w in bad)
        label = wg > wb if not math.isclose(wg, wb) else soft >= threshold
        side = good if label else bad
        # A tie broken toward a side with no votes can't happen: a tie needs votes on both sides.
        return Combined(_wmean(side), label, _wstd(usable))
    b = bootstrap_samples or DEFAULT_BOOTSTRAP_SAMPLES
    rng = random.Random(stable_seed("bootstrap", key))
    means = [_wmean(rng.choices(usable, k=len(usable))) for _ in range(b)]
    score = sum(means) / b
    spread = math.sqrt(max(0.0, sum((m - score) ** 2 for m in means) / b))
    return Combined(score, score >= threshold, spread)


# ----------------------------------------------------------------------------- agreement


def agreement_rate(a: Sequence[bool | None], b: Sequence[bool | None]) -> tuple[float | None, int]:
    """Share of items where both labels exist and are equal; (rate, items compared)."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not both:
        return None, 0
    return sum(x == y for x, y in both) / len(both), len(both)


def cohen_kappa(a: Sequence[bool | None], b: Sequence[bool | None]) -> float | None:
    """Cohen's kappa of two binary raters over the items both labeled.

    None when undefined: no common items, or chance agreement is 1 (both raters gave one and the
    same label to everything, so agreement says nothing about them).
    """
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not both:
        return None
    n = len(both)
    po = sum(x == y for x, y in both) / n
    pa = sum(x for x, _ in both) / n
    pb = sum(y for _, y in both) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if math.isclose(pe, 1.0):
        return None
    return (po - pe) / (1 - pe)


def agreement(
    labels: Mapping[str, Sequence[bool | None]], ensemble: Sequence[bool | None]
) -> dict[str, object]:
    """Agreement figures for the judges of one objective.

    `labels`: judge name -> its thresholded label per response; `ensemble`: the ensemble label per
    response. Returns {"with_ensemble": {judge: rate}, "pairs": [{a, b, agreement, kappa, n}]}.
    """
    names = list(labels)
    with_ensemble = {n: _round(agreement_rate(labels[n], ensemble)[0]) for n in names}
    pairs: list[dict[str, object]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rate, n = agreement_rate(labels[a], labels[b])
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "agreement": _round(rate),
                    "kappa": _round(cohen_kappa(labels[a], labels[b])),
                    "n": n,
                }
            )
    return {"with_ensemble": with_ensemble, "pairs": pairs}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
