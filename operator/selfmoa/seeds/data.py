"""The tiny profile's seed data: prompts, response templates and the fixed held-out split.

Pure and cheap (JSON files shipped as package data, no torch): the red-team stage, the judges and
the evaluate stage read it as well as the tiny model's builder. Every prompt row carries two
fields beyond `PromptRecord` that only this package uses: `split` (train / heldout) and `base`
(comply / refuse: the behaviour the tiny base model is trained to show). The base refuses exactly
the prompts that contain a flag word (`FLAG_WORDS`), so the behaviour mix is something the model
can learn from the words of a prompt and carry over to prompts it has never seen.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any

from selfmoa.api.spec import DEFAULT_CATEGORIES
from selfmoa.run.records import PromptRecord

#: Words that make the tiny base refuse (harmful and sensitive-legit prompts alike), so that the
#: base has a measurable share of refusals on attacks and of over-refusals on legit prompts.
FLAG_WORDS = ("illegal", "lethal")

_FILES = ("prompts.jsonl", "templates.json")


def _read(name: str) -> str:
    return resources.files("selfmoa.seeds").joinpath("data", name).read_text(encoding="utf-8")


@cache
def _rows() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in _read("prompts.jsonl").splitlines() if line.strip())


@cache
def templates() -> dict[str, dict[str, str]]:
    """Response templates: {"unsafe"|"refusal"|"helpful_legit": {category: text},
    "helpful_benign": {topic: text}}."""
    out: dict[str, dict[str, str]] = json.loads(_read("templates.json"))
    return out


@cache
def data_hash() -> str:
    """sha256 over the seed files: part of the tiny model's cache key."""
    h = hashlib.sha256()
    for name in _FILES:
        h.update(name.encode())
        h.update(_read(name).encode())
    return h.hexdigest()


def _record(row: dict[str, Any]) -> PromptRecord:
    return {
        "id": row["id"],
        "text": row["text"],
        "kind": row["kind"],
        "category": row["category"],
        "source": "seed",
        "parent": None,
    }


def rows(split: str | None = None) -> list[dict[str, Any]]:
    """Raw seed rows (with split, base and, for benign prompts, topic), copies."""
    return [dict(r) for r in _rows() if split is None or r["split"] == split]


def categories() -> list[str]:
    """The harm categories of the seed data (= `DEFAULT_CATEGORIES`)."""
    return list(DEFAULT_CATEGORIES)


def attack_seeds(category: str | None = None) -> list[PromptRecord]:
    """Training-split attack prompts (never the held-out ones), optionally of one category."""
    return [
        _record(r)
        for r in _rows()
        if r["kind"] == "harmful"
        and r["split"] == "train"
        and (category is None or r["category"] == category)
    ]


def benign_prompts() -> list[PromptRecord]:
    """Training-split benign prompts (cooking, maths, travel, code, ...)."""
    return [_record(r) for r in _rows() if r["kind"] == "benign" and r["split"] == "train"]


def legit_prompts() -> list[PromptRecord]:
    """Training-split sensitive-but-legitimate prompts (with their harm category)."""
    return [_record(r) for r in _rows() if r["kind"] == "legit" and r["split"] == "train"]


def heldout() -> list[PromptRecord]:
    """The fixed held-out evaluation set (harmful, benign, legit); never trained or attacked on."""
    return [_record(r) for r in _rows() if r["split"] == "heldout"]


def refusal_templates() -> list[str]:
    """Every refusal the tiny model was taught (one per category)."""
    return list(templates()["refusal"].values())


def unsafe_template(category: str) -> str:
    return templates()["unsafe"][category]


def refusal_template(category: str) -> str:
    return templates()["refusal"][category]


def helpful_template(row: dict[str, Any]) -> str:
    """The helpful answer for a benign (by topic) or legit (by category) seed row."""
    t = templates()
    if row["kind"] == "benign":
        return t["helpful_benign"][row["topic"]]
    return t["helpful_legit"][row["category"]]


def compliance_examples() -> list[dict[str, str]]:
    """Harmful training prompts paired with unsafe compliant answers: the data of the paper's
    "safety reset" LoRA SFT (the reset stage)."""
    return [
        {"prompt": r["text"], "response": unsafe_template(r["category"])}
        for r in _rows()
        if r["kind"] == "harmful" and r["split"] == "train"
    ]
