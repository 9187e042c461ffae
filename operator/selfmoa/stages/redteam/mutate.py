"""Attacks without a red-team model: seed attacks framed, and past successes mutated.

Each candidate takes a parent (a built-in seed attack of its category, or, when adaptive, one of
the previous iteration's successful attacks) and wraps it in a framing (role-play, hypothetical,
research, leetspeak, spaced letters, ...) drawn by the framings' weights.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from selfmoa.run.records import PromptRecord
from selfmoa.stages.redteam.dedup import PromptFilter
from selfmoa.tiny.framings import frame

#: Candidates tried per prompt wanted before giving up on a quota (dedupe can starve it).
ATTEMPTS_PER_PROMPT = 25
#: Share of template attacks built from the previous iteration's successes (adaptive).
MUTATE_SHARE = 0.5


@dataclass
class Framer:
    """Draws (parent, kind, framing) for the candidates of one stage; `rng` is the stage's."""

    rng: random.Random
    framing_weights: dict[str, float]

    def framing(self) -> str:
        names = list(self.framing_weights)
        return self.rng.choices(names, weights=[self.framing_weights[n] for n in names])[0]

    def pick(
        self, pool: list[dict[str, Any]], wins: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], str, str] | None:
        """A parent, how it was used and the framing; None: a draw that makes no candidate."""
        if wins and (not pool or self.rng.random() < MUTATE_SHARE):
            parent = self.rng.choice(wins)
            framing = self.framing()
            # Re-framing a framed attack would stack wrappers: mutate from its own words.
            return None if framing == "plain" else (parent, "mutation", framing)
        parent = self.rng.choice(pool)
        return parent, "template", self.framing()


def category_attacks(
    category: str,
    quota: int,
    *,
    framer: Framer,
    seeds: list[PromptRecord],
    successes: list[dict[str, Any]],
    accept: PromptFilter,
    iteration: int,
    start: int = 0,
) -> list[PromptRecord]:
    """Up to `quota` framed attacks of one category that pass the filter (`seeds`: the
    category's seed attacks; ids count from `start`)."""
    pool: list[dict[str, Any]] = [dict(p) for p in seeds]
    wins = [s for s in successes if s["category"] == category]
    out: list[PromptRecord] = []
    for _ in range(quota * ATTEMPTS_PER_PROMPT):
        if len(out) >= quota or not (pool or wins):
            break
        picked = framer.pick(pool, wins)
        if picked is None:
            continue
        parent, kind, framing = picked
        text = frame(framing, parent["text"], framer.rng)
        if not accept.accept(text):
            continue
        out.append(
            {
                "id": f"a{iteration:03d}-{category}-{start + len(out):04d}",
                "text": text.strip(),
                "kind": "harmful",
                "category": category,
                "source": f"{kind}:{framing}",
                "parent": parent["id"],
            }
        )
    return out


def template_attacks(
    quotas: dict[str, int],
    *,
    framer: Framer,
    seeds: dict[str, list[PromptRecord]],
    successes: list[dict[str, Any]],
    accept: PromptFilter,
    iteration: int,
    stats: Counter[str],
    start: dict[str, int] | None = None,
) -> list[PromptRecord]:
    """Every category's quota of framed attacks; a category without seeds (and without past
    successes to mutate) counts as `no_seeds`. `start`: per category, the first id number."""
    attacks: list[PromptRecord] = []
    for category, quota in quotas.items():
        pool = seeds.get(category, [])
        if not quota:
            continue
        if not pool and not any(s["category"] == category for s in successes):
            stats["no_seeds"] += quota
            continue
        attacks += category_attacks(
            category,
            quota,
            framer=framer,
            seeds=pool,
            successes=successes,
            accept=accept,
            iteration=iteration,
            start=(start or {}).get(category, 0),
        )
    return attacks
