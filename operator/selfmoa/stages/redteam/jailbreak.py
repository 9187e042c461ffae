"""Attacks wrapped in public jailbreak templates (`redTeam.jailbreakShare`).

A share of the iteration's attacks is put into the `{{ prompt }}` slot of PyRIT's jailbreak
templates ("prefix injection", "refusal suppression", role-play preambles...), so the policy
also learns to decline a request dressed up to slip past it. Templates are taken from a shuffled
list in turn, so two attacks share one only when there are more wrapped attacks than templates
(the near-duplicate filter would otherwise drop the second: the template dominates its words).
A wrapped attack keeps its id, category and parent; its source names the template.
"""

from __future__ import annotations

import random
from collections import Counter

from selfmoa.api.spec import RedTeamSpec
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageError


def wrap_jailbreaks(
    attacks: list[PromptRecord], spec: RedTeamSpec, rng: random.Random, stats: Counter[str]
) -> list[PromptRecord]:
    """`attacks` with `spec.jailbreakShare` of them wrapped (chosen by `rng`)."""
    wanted = round(len(attacks) * spec.jailbreak_share)
    if wanted <= 0:
        return attacks
    from selfmoa import public

    try:
        templates = public.jailbreak_templates(spec.jailbreak_max_chars)
    except public.PublicDataError as e:
        raise StageError(f"redTeam.jailbreakShare: {e}") from None
    if not templates:
        raise StageError(
            f"redTeam.jailbreakMaxChars: no jailbreak template is {spec.jailbreak_max_chars} "
            "characters or shorter"
        )
    order = rng.sample(templates, len(templates))
    chosen = set(rng.sample(range(len(attacks)), wanted))
    out: list[PromptRecord] = []
    used = 0
    for i, attack in enumerate(attacks):
        text = order[used % len(order)].fill(attack["text"]) if i in chosen else None
        if text is None or len(text) > spec.max_chars:
            out.append(attack)
            continue
        template = order[used % len(order)]
        used += 1
        out.append(
            {
                **attack,
                "text": text,
                "source": f"jailbreak:{template.name}",
                "parent": attack.get("parent") or attack["id"],
            }
        )
    stats["jailbreaks"] += used
    return out
