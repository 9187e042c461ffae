"""The redteam stage: this iteration's attack prompts, plus benign and legit prompts.

Seed attacks come from `redTeam.seeds` (the built-in seeds, the train split of public sets, or a
file; `sources`). With `spec.redTeam.model` set, `modelShare` of each category's quota is
written by that model (`generate`; it may be the policy itself, attacking itself); the rest are
framed seed attacks and mutated past successes (`mutate`). When adaptive, the previous
iteration's judgments steer the mix (`steer`). Every candidate goes through one filter
(`dedup`); then `jailbreakShare` of the attacks are wrapped in public jailbreak templates
(`jailbreak`). Helpfulness prompts are drawn beside the attacks (`helpfulness`). Deterministic
given the spec's seed and the iteration: one random generator, drawn from in a fixed order.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from selfmoa.run import layout
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput
from selfmoa.stages.redteam.dedup import PromptFilter, filter_for, jaccard, normalize, shingles
from selfmoa.stages.redteam.generate import ModelAttacks, model_attacks, parse_prompts
from selfmoa.stages.redteam.helpfulness import helpfulness_prompts, wanted
from selfmoa.stages.redteam.jailbreak import wrap_jailbreaks
from selfmoa.stages.redteam.mutate import Framer, template_attacks
from selfmoa.stages.redteam.steer import Outcomes, allocate, previous_outcomes, weights
from selfmoa.stages.sources import attack_seeds
from selfmoa.tiny.framings import FRAMINGS

__all__ = [
    "PromptFilter",
    "allocate",
    "jaccard",
    "normalize",
    "parse_prompts",
    "previous_outcomes",
    "run",
    "shingles",
]


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    if ctx.iteration < 1:
        raise StageError("redteam runs in iterations 1 and later")
    spec = ctx.spec
    rng = random.Random(f"selfmoa-redteam:{spec.sampling.seed}:{ctx.iteration}")
    accept = filter_for(spec)
    stats: Counter[str] = Counter()
    outcomes, adaptive = _outcomes(ctx)
    cat_weights = weights(outcomes.category_rates, spec.red_team.categories)
    quotas = allocate(spec.red_team.prompts_per_iteration, cat_weights)
    pool = attack_seeds(spec)
    attacks: list[PromptRecord] = []
    if spec.red_team.model:
        share = spec.red_team.model_share
        model_quotas = {c: round(q * share) for c, q in quotas.items()}
        attacks = _model_attacks(ctx, model_quotas, rng, outcomes, accept, stats, pool)
        quotas = {c: q - model_quotas[c] for c, q in quotas.items()}
    framing_weights: dict[str, float] = {}
    if any(quotas.values()):
        framing_weights = weights(outcomes.framing_rates, list(FRAMINGS))
        attacks += template_attacks(
            quotas,
            framer=Framer(rng, framing_weights),
            seeds=pool,
            successes=outcomes.successes,
            accept=accept,
            iteration=ctx.iteration,
            stats=stats,
            start=Counter(str(a["category"]) for a in attacks),
        )
    ctx.progress(len(attacks), spec.red_team.prompts_per_iteration, "red teaming")
    attacks = wrap_jailbreaks(attacks, spec.red_team, rng, stats)
    n_help = wanted(spec, len(attacks))
    prompts = attacks + helpfulness_prompts(spec, n_help, rng, accept)
    out.write_jsonl(layout.PROMPTS, [dict(p) for p in prompts])
    summary = _summary(ctx, prompts, attacks, n_help, accept, stats)
    summary.update(
        adaptive=adaptive,
        category_weights={k: round(v, 4) for k, v in cat_weights.items()},
        framing_weights={k: round(v, 4) for k, v in framing_weights.items()},
        previous_successes=len(outcomes.successes),
    )
    return summary


def _outcomes(ctx: StageContext) -> tuple[Outcomes, str]:
    """The previous iteration's outcomes when adaptive, and what the summary says about it."""
    if not (ctx.spec.red_team.adaptive and ctx.iteration > 1):
        return Outcomes(), "off"
    try:
        judgments = ctx.read_jsonl("judge", layout.JUDGMENTS, ctx.iteration - 1)
    except (StageError, FileNotFoundError):
        return Outcomes(), "no previous judgments"
    return previous_outcomes(judgments), "on"


def _model_attacks(
    ctx: StageContext,
    quotas: dict[str, int],
    rng: random.Random,
    outcomes: Outcomes,
    accept: PromptFilter,
    stats: Counter[str],
    pool: dict[str, list[PromptRecord]],
) -> list[PromptRecord]:
    rt = ctx.spec.red_team
    assert rt.model
    return model_attacks(
        ctx.engines.for_model(rt.model),
        ModelAttacks(rt.model, quotas, ctx.iteration, accept, stats),
        rng=rng,
        successes=outcomes.successes,
        seeds=pool,
        temperature=rt.temperature,
        seed=ctx.spec.sampling.seed + 1000 * ctx.iteration,
        per_request=rt.prompts_per_request,
    )


def _summary(
    ctx: StageContext,
    prompts: list[PromptRecord],
    attacks: list[PromptRecord],
    n_help: int,
    accept: PromptFilter,
    stats: Counter[str],
) -> dict[str, Any]:
    rt = ctx.spec.red_team
    return {
        "prompts": len(prompts),
        "attacks": len(attacks),
        "attacks_wanted": rt.prompts_per_iteration,
        "helpfulness_wanted": n_help,
        "per_kind": dict(Counter(p["kind"] for p in prompts)),
        "per_category": dict(Counter(p["category"] or "none" for p in prompts)),
        "per_source": dict(Counter(p["source"] for p in prompts)),
        "dropped": {
            **{k: accept.dropped[k] for k in ("duplicate", "near_duplicate", "length", "heldout")},
            "unparsable": stats["unparsable"],
            "unparsable_lines": stats["unparsable_lines"],
            "refusals": stats["refusals"],
            "no_harm": stats["no_harm"],
        },
        "jailbreaks": stats["jailbreaks"],
        "no_seeds": stats["no_seeds"],
        "red_team_model": rt.model,
    }
