"""The benign and legit prompts beside the attacks, so the loop also learns not to over-refuse.

`helpfulness.fraction` of the iteration's prompts are helpfulness prompts, `legitShare` of them
legit (sensitive-sounding but fine to answer); drawn from the built-in seeds, public sets
(benign-edgy, benign-qa) or a JSONL file.
"""

from __future__ import annotations

import random

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run.records import PromptKind, PromptRecord
from selfmoa.stages.base import StageError
from selfmoa.stages.redteam.dedup import PromptFilter
from selfmoa.stages.sources import prompts_of
from selfmoa.tiny import seeds


def helpfulness_pools(spec: AlignmentRunSpec) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(benign, legit) prompts to draw from: the train split of `helpfulness.prompts`."""
    rows = prompts_of(
        spec,
        spec.helpfulness.prompts,
        split="train",
        field="helpfulness.prompts",
        builtin=lambda: seeds.benign_prompts() + seeds.legit_prompts(),
        kind="benign",
    )
    for i, row in enumerate(rows):
        if row["kind"] not in ("benign", "legit"):
            raise StageError(f"helpfulness.prompts: row {i + 1} needs kind benign or legit")
    return [r for r in rows if r["kind"] == "benign"], [r for r in rows if r["kind"] == "legit"]


def draw(
    pool: list[PromptRecord], k: int, kind: PromptKind, rng: random.Random, accept: PromptFilter
) -> list[PromptRecord]:
    """Up to k prompts of `kind` from `pool`, in a random order, that pass the filter."""
    out: list[PromptRecord] = []
    for p in rng.sample(pool, len(pool)):
        if len(out) >= k:
            break
        if p["kind"] == kind and accept.accept(p["text"]):
            out.append(dict(p))  # type: ignore[arg-type]
    return out


def wanted(spec: AlignmentRunSpec, attacks: int) -> int:
    """Helpfulness prompts to go with `attacks` attacks (none without attacks)."""
    fraction = spec.helpfulness.fraction
    return round(attacks * fraction / (1 - fraction)) if attacks else 0


def helpfulness_prompts(
    spec: AlignmentRunSpec, n_help: int, rng: random.Random, accept: PromptFilter
) -> list[PromptRecord]:
    """`n_help` prompts, `legitShare` of them legit (drawn first), the rest benign."""
    n_legit = round(n_help * spec.helpfulness.legit_share)
    benign_pool, legit_pool = helpfulness_pools(spec)
    legit = draw(legit_pool, n_legit, "legit", rng, accept)
    return legit + draw(benign_pool, n_help - n_legit, "benign", rng, accept)
