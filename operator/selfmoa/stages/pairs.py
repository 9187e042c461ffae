"""pairs: (prompt, chosen, rejected) from the multi-objective scores of each prompt's responses.

Strategies (`spec.preferences`):
- scalarized: value = sum_o w_o * score_o with the weights normalized to sum 1; every ordered
  pair of a prompt's responses whose value difference (the margin) is >= minMargin is a
  candidate.
- pareto: candidates are pairs where chosen dominates rejected (>= on every objective, > on one);
  the margin is still the scalarized difference, and minMargin still applies.
With acceptableChosen only a response the ensemble labels good on every weighted
objective may be chosen: "less bad" is not a target (a garbled text beside an unsafe one, a
refusal of a benign request beside a garbled one). Per prompt, candidates are taken largest
margin first, up to maxPairsPerPrompt; among equal
margins a pair whose responses were used less often wins, so four samples give disjoint pairs
before one response is reused. Identical texts are never paired (the first copy stands for all).
Responses lacking a score an objective needs are left out and counted.

Self-written declines (`sampling.selfDecline`: responses marked `guided`) follow the paper's
"good answer it generates itself": on an attack, one may be chosen (never rejected), and only
when none of the prompt's plain samples is labelled safe, so a refusal the policy already gives
on its own is what it learns from; on a benign or legit prompt it may only be rejected: the
needless refusal the prompt's good answers are preferred to (the contrast that keeps the loop
from learning "refuse anything edgy"). That contrast pair, with the prompt's best plain answer,
is made whenever the answer is worth more than the decline at all (minMargin does not apply:
weak judges rarely score an edgy question's answer far above a refusal of it) and is taken
before the prompt's other pairs.

With declineContrast, pairs on attack prompts teach a decline and contrast pairs teach where it
does not belong: on a helpfulness prompt (legit ones of the attack's category first), the
prompt's best acceptable answer is chosen over the attack pair's chosen decline, a response to
another prompt that on this one is a refusal. Its rejected scores are the rubric's for a
refusal of a fair request (the decline's own safety, helpfulness 1). Attack-only pairs teach
"decline" (the tiny policy then refuses "what can I cook with chicken?"); contrast pairs make
the decision depend on the request. The prompt kinds come from how the prompts were made (the
red team's attacks vs the helpfulness set), not from any judge.

With `evaluation.ceiling`, gold-pairs.jsonl is built the same way from the gold judge's scores:
the strong-supervision ceiling whose adapter PGR is measured against. With
`evaluation.goldBaseline`, pairs.jsonl itself comes from the gold scores: the fully
gold-supervised loop that weak-to-strong runs are compared with.

The summary's `outcomes` say what the loop saw and what it trains toward: the outcome classes
of every sampled response (`sampled`: refusal share, deflection, garble...) and of the chosen
side of the pairs (`chosen`): the gold judge's classes when the judgments carry gold scores,
else what the weak judges can tell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any, Literal

from selfmoa.api.spec import Objective, PairStrategy, PreferencesSpec
from selfmoa.judges.base import prompt_of
from selfmoa.run import layout
from selfmoa.run.evaluation import outcome_shares, recorded_gold_scores, weak_outcome, weak_scores
from selfmoa.run.metrics import Outcomes
from selfmoa.run.records import JudgmentRecord, PairRecord, Scores
from selfmoa.stages.base import StageContext, StageError, StageOutput

GOLD_PAIRS = layout.GOLD_PAIRS
#: Margins are sums of float products: 0.6 * 4 - 0.4 * 3.5 must count as 1.0.
EPS = 1e-9


def _weights(prefs: PreferencesSpec) -> dict[str, float]:
    total = sum(prefs.weights.values())
    return {o: w / total for o, w in prefs.weights.items() if w > 0}


def _value(scores: Mapping[str, Any], weights: dict[str, float]) -> float:
    """The scalarized score (a missing score counts 0; `_groups` drops such responses first)."""
    return sum(w * float(scores.get(o) or 0.0) for o, w in weights.items())


def _acceptable(scores: Mapping[str, float], weights: dict[str, float], floor: float) -> bool:
    """Good on every weighted objective: at least `floor` (the ensemble threshold) on each."""
    return all(scores[o] >= floor - EPS for o in weights)


#: A prompt's usable responses: (judgment, scores on the objectives needed, scalarized value).
Member = tuple[JudgmentRecord, dict[str, float], float]


def build_pairs(
    judgments: Sequence[JudgmentRecord],
    prefs: PreferencesSpec,
    *,
    threshold: float,
    use_gold: bool = False,
) -> tuple[list[PairRecord], dict[str, Any]]:
    """Preference pairs and a summary of how they were made (`threshold`: the ensemble's, what
    an acceptable chosen response scores at least on every weighted objective)."""
    skipped: Counter[str] = Counter()
    groups = _groups(judgments, prefs, use_gold, skipped)
    pairs: list[PairRecord] = []
    counts: Counter[str] = Counter()
    floor = threshold if prefs.acceptable_chosen else None
    for prompt_id, members in groups.items():
        cands = _candidates(members, prefs, counts, floor, guided_may_choose=_needs_guided(members))
        first = {b for _, _, b in cands if _contrast_side(members[b][0])}
        chosen = _select(cands, prefs.max_pairs_per_prompt, first=first)
        counts["candidates"] += len(cands)
        counts["capped"] += len(cands) - len(chosen)
        for margin, a, b in chosen:
            pairs.append(_pair(prompt_id, members[a][0], members[b][0], margin, prefs, use_gold))
    if prefs.decline_contrast > 0:
        contrast = _contrast_pairs(pairs, groups, prefs, threshold, use_gold)
        counts["contrast"] = len(contrast)
        pairs.extend(contrast)
    summary = _summary(pairs, judgments, groups, skipped, use_gold)
    summary.update(
        {
            k: counts[k]
            for k in (
                "candidates",
                "below_margin",
                "not_dominating",
                "chosen_not_acceptable",
                "capped",
                "contrast",
                "guided_role",
            )
        }
    )
    return pairs, summary


def _groups(
    judgments: Sequence[JudgmentRecord],
    prefs: PreferencesSpec,
    use_gold: bool,
    skipped: Counter[str],
) -> dict[str, list[Member]]:
    """Each prompt's responses that have every score needed, first copy of each text only."""
    weights = _weights(prefs)
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
        groups.setdefault(j["prompt_id"], []).append((j, full, _value(full, weights)))
    return groups


def _needs_guided(members: list[Member]) -> bool:
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


def _candidates(
    members: list[Member],
    prefs: PreferencesSpec,
    counts: Counter[str],
    floor: float | None,
    *,
    guided_may_choose: bool = False,
) -> list[tuple[float, int, int]]:
    """(margin, chosen index, rejected index) of every ordered pair that qualifies (`floor`: the
    score a chosen response needs on every weighted objective; None: any)."""
    weighted = _weights(prefs)
    cands: list[tuple[float, int, int]] = []
    for a, (ja, sa, va) in enumerate(members):
        acceptable = floor is None or _acceptable(sa, weighted, floor)
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
            if va - vb < prefs.min_margin - EPS and not _contrast_side(jb):
                counts["below_margin"] += 1
                continue
            cands.append((va - vb, a, b))
    return cands


def _dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(a[o] >= b[o] for o in a) and any(a[o] > b[o] for o in a)


def _contrast_side(j: JudgmentRecord) -> bool:
    """A self-written decline of a fair request: the rejected side of a contrast pair."""
    return bool(j.get("guided")) and j["kind"] != "harmful"


def _select(
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


#: The rubric's helpfulness of a refusal ("1 = refuses / no attempt"): a decline of an attack
#: given to a fair request.
REFUSAL_HELPFULNESS = 1.0


def _contrast_pairs(
    pairs: list[PairRecord],
    groups: dict[str, list[Member]],
    prefs: PreferencesSpec,
    threshold: float,
    use_gold: bool,
) -> list[PairRecord]:
    """Contrast pairs (see the module doc) for the strongest `declineContrast` share of the
    attack pairs, each on its own helpfulness prompt."""
    attacks = sorted(
        (p for p in pairs if p["kind"] == "harmful"), key=lambda p: (-p["margin"], p["id"])
    )
    wanted = round(prefs.decline_contrast * len(attacks))
    weights = _weights(prefs)
    # Each helpfulness prompt's best response, if acceptable on every weighted objective.
    answers: dict[str, Member] = {}
    for prompt_id, members in groups.items():
        if not members or members[0][0]["kind"] == "harmful":
            continue
        best = max(members, key=lambda m: (m[2], -m[0]["sample"]))
        if _acceptable(best[1], weights, threshold):
            answers[prompt_id] = best
    out: list[PairRecord] = []
    for attack in attacks:
        if len(out) >= wanted or not answers:
            break
        same = [i for i, m in answers.items() if m[0]["category"] == attack["category"]]
        chosen, _, value = answers.pop(min(same) if same else min(answers))
        if chosen["text"].strip() == attack["chosen"].strip():
            continue
        decline = Scores(safety=attack["chosen_scores"]["safety"], helpfulness=REFUSAL_HELPFULNESS)
        out.append(
            _record(
                chosen,
                rejected=(attack["chosen_id"], attack["chosen"], decline),
                margin=value - _value(decline, weights),
                strategy="contrast",
                use_gold=use_gold,
                # The decline was judged on its attack prompt, never on this one: no votes.
                rejected_votes={},
            )
        )
    return out


def _pair(
    prompt_id: str,
    c: JudgmentRecord,
    r: JudgmentRecord,
    margin: float,
    prefs: PreferencesSpec,
    use_gold: bool,
) -> PairRecord:
    rs = _scores_of(r, use_gold)
    return _record(
        c,
        rejected=(r["id"], r["text"], rs),
        margin=margin,
        strategy=prefs.strategy.value,
        use_gold=use_gold,
        rejected_votes=r["votes"],
        pair_id=f"{prompt_id}#{c['sample']}>{r['sample']}",
    )


def _scores_of(j: JudgmentRecord, use_gold: bool) -> Scores:
    scores = (recorded_gold_scores if use_gold else weak_scores)(j)
    assert scores is not None  # `_groups` kept only responses with scores
    return Scores(safety=scores["safety"], helpfulness=scores["helpfulness"])


def _record(
    c: JudgmentRecord,
    *,
    rejected: tuple[str, str, Scores],
    margin: float,
    strategy: str,
    use_gold: bool,
    rejected_votes: dict[str, dict[str, float | None]],
    pair_id: str | None = None,
) -> PairRecord:
    """A pair on `c`'s prompt with `c` chosen; `rejected` is (id, text, scores)."""
    rejected_id, rejected_text, rejected_scores = rejected
    return PairRecord(
        id=pair_id or f"{c['id']}>{rejected_id}",
        prompt_id=c["prompt_id"],
        prompt=c["prompt"],
        chosen=c["text"],
        rejected=rejected_text,
        chosen_id=c["id"],
        rejected_id=rejected_id,
        chosen_scores=_scores_of(c, use_gold),
        rejected_scores=rejected_scores,
        margin=round(margin, 6),
        strategy=strategy,
        kind=c["kind"],
        category=c["category"],
        source=c["source"],
        votes={"chosen": c["votes"], "rejected": rejected_votes},
    )


def _summary(
    pairs: list[PairRecord],
    judgments: Sequence[JudgmentRecord],
    groups: dict[str, Any],
    skipped: Counter[str],
    use_gold: bool,
) -> dict[str, Any]:
    def mean_of(side: str, objective: str) -> float | None:
        vals = [p[side][objective] for p in pairs if p[side][objective] is not None]  # type: ignore[literal-required]
        return round(fmean(vals), 4) if vals else None

    return {
        "pairs": len(pairs),
        "scores": "gold" if use_gold else "ensemble",
        "responses": len(judgments),
        "prompts": len({j["prompt_id"] for j in judgments}),
        "prompts_with_pairs": len({p["prompt_id"] for p in pairs}),
        "per_kind": dict(sorted(Counter(p["kind"] for p in pairs).items())),
        "per_category": dict(sorted(Counter(p["category"] or "none" for p in pairs).items())),
        "per_strategy": dict(sorted(Counter(p["strategy"] for p in pairs).items())),
        "skipped": dict(sorted(skipped.items())),
        "mean_margin": round(fmean(p["margin"] for p in pairs), 4) if pairs else None,
        "chosen_mean": {o.value: mean_of("chosen_scores", o.value) for o in Objective},
        "rejected_mean": {o.value: mean_of("rejected_scores", o.value) for o in Objective},
    }


def outcome_classes(
    judgments: Sequence[JudgmentRecord], threshold: float
) -> tuple[list[str | None], Literal["gold", "judges"]]:
    """Each response's outcome class, and whose: the gold judge's (tiny profile, when the
    judgments carry gold scores), else the weak judges'."""
    if judgments and all(j.get("gold") for j in judgments):
        from selfmoa.seeds import oracle

        gold: list[str | None] = [oracle.outcome(prompt_of(j), j["text"]) for j in judgments]
        return gold, "gold"
    return [weak_outcome(j, threshold) for j in judgments], "judges"


def outcomes(
    judgments: Sequence[JudgmentRecord], pairs: Sequence[PairRecord], threshold: float
) -> dict[str, Any]:
    """{"sampled": Outcomes, "chosen": Outcomes} as JSON (either None when nothing is classed)."""
    classes, src = outcome_classes(judgments, threshold)
    by_id = dict(zip((j["id"] for j in judgments), classes, strict=True))
    rows = {j["id"]: j for j in judgments}
    chosen = [rows[p["chosen_id"]] for p in pairs if p["chosen_id"] in rows]

    def dump(o: Outcomes | None) -> dict[str, Any] | None:
        return None if o is None else o.model_dump(mode="json")

    return {
        "sampled": dump(outcome_shares(judgments, classes, src)),
        "chosen": dump(outcome_shares(chosen, [by_id[j["id"]] for j in chosen], src)),
    }


def _need_gold(judgments: Sequence[JudgmentRecord], field: str) -> None:
    if judgments and not any(j.get("gold") for j in judgments):
        raise StageError(
            f"evaluation.{field}: the judgments carry no gold scores (judge stage ran without "
            "the gold judge)"
        )


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    judgments: list[JudgmentRecord] = ctx.read_jsonl("judge", layout.JUDGMENTS)  # type: ignore[assignment]
    prefs = ctx.spec.preferences
    ev = ctx.spec.evaluation
    if ev.gold_baseline:
        _need_gold(judgments, "goldBaseline")
    threshold = ctx.spec.ensemble.threshold
    pairs, summary = build_pairs(judgments, prefs, threshold=threshold, use_gold=ev.gold_baseline)
    out.write_jsonl(layout.PAIRS, pairs)  # type: ignore[arg-type]
    if ev.ceiling:
        _need_gold(judgments, "ceiling")
        gold_pairs, gold_summary = build_pairs(judgments, prefs, threshold=threshold, use_gold=True)
        out.write_jsonl(GOLD_PAIRS, gold_pairs)  # type: ignore[arg-type]
        summary["gold"] = gold_summary
    summary["outcomes"] = outcomes(judgments, pairs, threshold)
    return summary
