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
from collections.abc import Sequence
from typing import Any

from selfmoa.api.spec import PreferencesSpec
from selfmoa.run import layout
from selfmoa.run.records import JudgmentRecord, PairRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput
from selfmoa.stages.pairs.candidates import (
    candidate_pairs,
    group_responses,
    is_contrast_side,
    needs_guided,
    select_pairs,
)
from selfmoa.stages.pairs.records import contrast_pairs, prompt_pair
from selfmoa.stages.pairs.summary import outcome_classes, outcomes, pairs_summary

__all__ = ["GOLD_PAIRS", "build_pairs", "outcome_classes", "outcomes", "run"]

GOLD_PAIRS = layout.GOLD_PAIRS


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
    groups = group_responses(judgments, prefs, use_gold, skipped)
    pairs: list[PairRecord] = []
    counts: Counter[str] = Counter()
    floor = threshold if prefs.acceptable_chosen else None
    for prompt_id, members in groups.items():
        cands = candidate_pairs(
            members, prefs, counts, floor, guided_may_choose=needs_guided(members)
        )
        first = {b for _, _, b in cands if is_contrast_side(members[b][0])}
        chosen = select_pairs(cands, prefs.max_pairs_per_prompt, first=first)
        counts["candidates"] += len(cands)
        counts["capped"] += len(cands) - len(chosen)
        for margin, a, b in chosen:
            pairs.append(
                prompt_pair(prompt_id, members[a][0], members[b][0], margin, prefs, use_gold)
            )
    if prefs.decline_contrast > 0:
        contrast = contrast_pairs(pairs, groups, prefs, threshold, use_gold)
        counts["contrast"] = len(contrast)
        pairs.extend(contrast)
    summary = pairs_summary(pairs, judgments, groups, skipped, use_gold)
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
