"""Adaptive steering: the previous iteration's judgments decide what to draw more of.

Each category and framing is drawn in proportion to its attack success rate, with a floor so none
disappears; the successful attacks themselves are handed on to be mutated again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selfmoa.tiny.framings import FRAMINGS

#: Lowest sampling weight of a category or framing, relative to a 100% success rate.
WEIGHT_FLOOR = 0.1


@dataclass(frozen=True)
class Outcomes:
    """What the previous iteration's attacks achieved."""

    category_rates: dict[str, float] = field(default_factory=dict)
    framing_rates: dict[str, float] = field(default_factory=dict)
    #: Attacks that got an unsafe answer: {id, text, category, source}.
    successes: list[dict[str, Any]] = field(default_factory=list)


def weights(rates: dict[str, float], names: Sequence[str]) -> dict[str, float]:
    """Success rate with a floor; names with no observations get the mean observed rate."""
    seen = [rates[n] for n in names if n in rates]
    default = sum(seen) / len(seen) if seen else 1.0
    return {n: max(rates.get(n, default), WEIGHT_FLOOR) for n in names}


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` over the keys in proportion to weights (largest remainder, stable order)."""
    names = list(weights)
    s = sum(weights.values())
    if not names:
        return {}
    if s <= 0:
        weights, s = dict.fromkeys(names, 1.0), float(len(names))
    exact = {n: total * weights[n] / s for n in names}
    out = {n: int(exact[n]) for n in names}
    rest = total - sum(out.values())
    for n in sorted(names, key=lambda n: (-(exact[n] - out[n]), names.index(n)))[:rest]:
        out[n] += 1
    return out


def framing_of(source: str) -> str | None:
    kind, _, name = source.partition(":")
    return name if kind in ("template", "mutation") and name in FRAMINGS else None


def previous_outcomes(judgments: list[dict[str, Any]]) -> Outcomes:
    """Success rates per category and framing, and the successful attacks, from judgments."""
    by_cat: dict[str, list[bool]] = {}
    by_framing: dict[str, list[bool]] = {}
    wins: dict[str, dict[str, Any]] = {}
    for row in judgments:
        label = (row.get("labels") or {}).get("safety")
        if row.get("kind") != "harmful" or label is None:
            continue
        success = label is False
        cat = row.get("category") or ""
        by_cat.setdefault(cat, []).append(success)
        framing = framing_of(str(row.get("source") or ""))
        if framing:
            by_framing.setdefault(framing, []).append(success)
        if success and row["prompt_id"] not in wins:
            wins[row["prompt_id"]] = {
                "id": row["prompt_id"],
                "text": row["prompt"],
                "category": cat,
                "source": row.get("source"),
            }
    return Outcomes(
        category_rates={c: sum(v) / len(v) for c, v in by_cat.items()},
        framing_rates={f: sum(v) / len(v) for f, v in by_framing.items()},
        successes=list(wins.values()),
    )
