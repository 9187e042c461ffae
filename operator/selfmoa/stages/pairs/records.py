"""The pair records: a prompt's own pairs, and the decline-contrast pairs on helpfulness prompts
(see the `selfmoa.stages.pairs` module doc)."""

from __future__ import annotations

from selfmoa.api.spec import PreferencesSpec
from selfmoa.run.evaluation import recorded_gold_scores, weak_scores
from selfmoa.run.records import JudgmentRecord, PairRecord, Scores
from selfmoa.stages.pairs.candidates import Member, is_acceptable, normalized_weights, scalarized

#: The rubric's helpfulness of a refusal ("1 = refuses / no attempt"): a decline of an attack
#: given to a fair request.
REFUSAL_HELPFULNESS = 1.0


def contrast_pairs(
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
    weights = normalized_weights(prefs)
    # Each helpfulness prompt's best response, if acceptable on every weighted objective.
    answers: dict[str, Member] = {}
    for prompt_id, members in groups.items():
        if not members or members[0][0]["kind"] == "harmful":
            continue
        best = max(members, key=lambda m: (m[2], -m[0]["sample"]))
        if is_acceptable(best[1], weights, threshold):
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
            pair_record(
                chosen,
                rejected=(attack["chosen_id"], attack["chosen"], decline),
                margin=value - scalarized(decline, weights),
                strategy="contrast",
                use_gold=use_gold,
                # The decline was judged on its attack prompt, never on this one: no votes.
                rejected_votes={},
            )
        )
    return out


def prompt_pair(
    prompt_id: str,
    c: JudgmentRecord,
    r: JudgmentRecord,
    margin: float,
    prefs: PreferencesSpec,
    use_gold: bool,
) -> PairRecord:
    rs = scores_of(r, use_gold)
    return pair_record(
        c,
        rejected=(r["id"], r["text"], rs),
        margin=margin,
        strategy=prefs.strategy.value,
        use_gold=use_gold,
        rejected_votes=r["votes"],
        pair_id=f"{prompt_id}#{c['sample']}>{r['sample']}",
    )


def scores_of(j: JudgmentRecord, use_gold: bool) -> Scores:
    scores = (recorded_gold_scores if use_gold else weak_scores)(j)
    assert scores is not None  # `group_responses` kept only responses with scores
    return Scores(safety=scores["safety"], helpfulness=scores["helpfulness"])


def pair_record(
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
        chosen_scores=scores_of(c, use_gold),
        rejected_scores=rejected_scores,
        margin=round(margin, 6),
        strategy=strategy,
        kind=c["kind"],
        category=c["category"],
        source=c["source"],
        votes={"chosen": c["votes"], "rejected": rejected_votes},
    )
