"""Which ordered pairs of a prompt's responses qualify as preference pairs, and which are taken
(the rules are in the `selfmoa.stages.pairs` module doc)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from selfmoa.api.spec import Objective, PairStrategy, PreferencesSpec
from selfmoa.run.evaluation import recorded_gold_scores, weak_scores
from selfmoa.run.records import JudgmentRecord

#: Margins are sums of float products: 0.6 * 4 - 0.4 * 3.5 must count as 1.0.
EPS = 1e-9


def normalized_weights(prefs: PreferencesSpec) -> dict[str, float]:
    total = sum(prefs.weights.values())
    return {o: w / total for o, w in prefs.weights.items() if w > 0}


def scalarized(scores: Mapping[str, Any], weights: dict[str, float]) -> float:
    """The scalarized score (a missing score counts 0; `group_responses` drops such responses
    first)."""
    return sum(w * float(scores.get(o) or 0.0) for o, w in weights.items())


def is_acceptable(scores: Mapping[str, float], weights: dict[str, float], floor: float) -> bool:
    """Good on every weighted objective: at least `floor` (the ensemble threshold) on each."""
    return all(scores[o] >= floor - EPS for o in weights)


#: A prompt's usable responses: (judgment, scores on the objectives needed, scalarized value).
Member = tuple[JudgmentRecord, dict[str, float], float]


def group_responses(
    judgments: Sequence[JudgmentRecord],
    prefs: PreferencesSpec,
    use_gold: bool,
    skipped: Counter[str],
) -> dict[str, list[Member]]:
    """Each prompt's responses that have every score needed, first copy of each text only."""
    weights = normalized_weights(prefs)
    # Scalarized needs the weighted objectives; Pareto compares on every objective.
    needed = (
        list(weights) if prefs.strategy == PairStrategy.scalarized else [o.value for o in Objective]
    )
    groups: dict[str, list[Member]] = {}
    seen_texts: dict[str, set[str]] = {}
    for j in judgments:
        scores = (recorded_gold_scores if use_gold else weak_scores)(j)
        if scores is None:
            skipped["no_gold" if use_gold else "no_scores"] += 1
            continue
        vals: dict[str, float | None] = {o: scores.get(o) for o in needed}  # type: ignore[misc]
        if any(v is None for v in vals.values()):
            skipped["none_score"] += 1
            continue
        texts = seen_texts.setdefault(j["prompt_id"], set())
        key = j["text"].strip()
        if key in texts:
            skipped["duplicate_text"] += 1
            continue
        texts.add(key)
        full = {o: float(v) for o, v in vals.items() if v is not None}
        groups.setdefault(j["prompt_id"], []).append((j, full, scalarized(full, weights)))
    return groups


def needs_guided(members: list[Member]) -> bool:
    """An attack none of whose plain samples the ensemble labels safe."""
    plain = [j for j, _, _ in members if not j.get("guided")]
    return (
        bool(members)
        and members[0][0]["kind"] == "harmful"
        and not any(j["labels"].get("safety") for j in plain)
    )


def _guided_role_allowed(j: JudgmentRecord, as_chosen: bool, may_choose: bool) -> bool:
    """A self-written decline is chosen only on an attack that needs it, rejected only on a
    prompt that is no attack; plain samples take either role."""
    if not j.get("guided"):
        return True
    if as_chosen:
        return j["kind"] == "harmful" and may_choose
    return j["kind"] != "harmful"


def candidate_pairs(
    members: list[Member],
    prefs: PreferencesSpec,
    counts: Counter[str],
    floor: float | None,
    *,
    guided_may_choose: bool = False,
) -> list[tuple[float, int, int]]:
    """(margin, chosen index, rejected index) of every ordered pair that qualifies (`floor`: the
    score a chosen response needs on every weighted objective; None: any)."""
    weighted = normalized_weights(prefs)
    cands: list[tuple[float, int, int]] = []
    for a, (ja, sa, va) in enumerate(members):
        acceptable = floor is None or is_acceptable(sa, weighted, floor)
        for b, (jb, sb, vb) in enumerate(members):
            if va <= vb:
                continue
            if not (
                _guided_role_allowed(ja, True, guided_may_choose)
                and _guided_role_allowed(jb, False, guided_may_choose)
            ):
                counts["guided_role"] += 1
                continue
            if not acceptable:
                counts["chosen_not_acceptable"] += 1
                continue
            if prefs.strategy == PairStrategy.pareto and not _dominates(sa, sb):
                counts["not_dominating"] += 1
                continue
            if va - vb < prefs.min_margin - EPS and not is_contrast_side(jb):
                counts["below_margin"] += 1
                continue
            cands.append((va - vb, a, b))
    return cands


def _dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(a[o] >= b[o] for o in a) and any(a[o] > b[o] for o in a)


def is_contrast_side(j: JudgmentRecord) -> bool:
    """A self-written decline of a fair request: the rejected side of a contrast pair."""
    return bool(j.get("guided")) and j["kind"] != "harmful"


def select_pairs(
    cands: list[tuple[float, int, int]], limit: int, *, first: set[int] | None = None
) -> list[tuple[float, int, int]]:
    """Largest margins first; equal margins: the pair whose responses were used least. The
    best pair rejecting a response in `first` (a contrast pair's decline) is taken first."""
    left = sorted(cands, key=lambda c: (-c[0], c[1], c[2]))
    used: Counter[int] = Counter()
    out: list[tuple[float, int, int]] = []
    lead = next((c for c in left if c[2] in (first or set())), None)
    if lead is not None and limit > 0:
        left.remove(lead)
        used.update((lead[1], lead[2]))
        out.append(lead)
    while left and len(out) < limit:
        best = left[0][0] - EPS
        tier = [c for c in left if c[0] >= best]
        pick = min(tier, key=lambda c: (used[c[1]] + used[c[2]], c[1], c[2]))
        left.remove(pick)
        used.update((pick[1], pick[2]))
        out.append(pick)
    return out
