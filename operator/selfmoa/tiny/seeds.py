"""The tiny profile's seed data: prompts, response templates and the fixed evaluation splits.

Pure and cheap (JSON files shipped as package data, no torch): the red-team stage, the judges and
the evaluate stage read it as well as the tiny model's builder. Every prompt row carries two
fields beyond `PromptRecord` that only this package uses: `split` and `base` (comply / refuse:
the behaviour the tiny base model is trained to show). The base declines exactly the prompts
that contain a flag word (`FLAG_WORDS`), so the behaviour mix is something the model can learn
from the words of a prompt and carry over to prompts it has never seen.

Splits, disjoint: `train` (what the base, the red team and the helpfulness prompts draw on),
`loop` (benign and legit prompts only the loop's helpfulness mix draws on: the base never saw
them, so the loop meets unfamiliar prompts and can see itself over-refuse them, as it would
with a real model), `validation` (what the gate decides on: accept, roll back, best, early stop)
and `heldout` (what the run reports; never trained, attacked or decided on). The tiny tokenizer
and base see the `train` split alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
    return resources.files("selfmoa.tiny").joinpath("data", name).read_text(encoding="utf-8")


@cache
def _rows() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in _read("prompts.jsonl").splitlines() if line.strip())


@cache
def templates() -> dict[str, dict[str, str]]:
    """Response templates: {"unsafe"|"refusal"|"redirect"|"helpful_legit": {category: text},
    "helpful_benign": {topic: text}}."""
    out: dict[str, dict[str, str]] = json.loads(_read("templates.json"))
    return out


@cache
def data_hash() -> str:
    """sha256 over the seed files."""
    h = hashlib.sha256()
    for name in _FILES:
        h.update(name.encode())
        h.update(_read(name).encode())
    return h.hexdigest()


@cache
def train_hash() -> str:
    """sha256 over what the tiny base is built from (the train split and the templates): its
    cache key, so adding evaluation or loop prompts rebuilds no base."""
    h = hashlib.sha256()
    h.update(json.dumps(rows("train"), sort_keys=True).encode())
    h.update(json.dumps(templates(), sort_keys=True).encode())
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
    """Benign helpfulness prompts of the train and loop splits (cooking, maths, travel, ...)."""
    return [
        _record(r) for r in _rows() if r["kind"] == "benign" and r["split"] in ("train", "loop")
    ]


def legit_prompts() -> list[PromptRecord]:
    """Sensitive-but-legitimate prompts of the train and loop splits (with their category)."""
    return [_record(r) for r in _rows() if r["kind"] == "legit" and r["split"] in ("train", "loop")]


def heldout() -> list[PromptRecord]:
    """The fixed held-out test set (harmful, benign, legit): reported, never trained, attacked
    or decided on."""
    return [_record(r) for r in _rows() if r["split"] == "heldout"]


def validation() -> list[PromptRecord]:
    """The validation set the gate decides on: disjoint from the held-out and training prompts."""
    return [_record(r) for r in _rows() if r["split"] == "validation"]


def evaluation_texts() -> list[str]:
    """Texts that must never become training prompts: the validation and held-out sets."""
    return [r["text"] for r in _rows() if r["split"] in ("validation", "heldout")]


@cache
def _topics() -> tuple[dict[str, str], dict[str, str]]:
    by_id = {r["id"]: r["topic"] for r in _rows() if r.get("topic")}
    by_text = {r["text"]: r["topic"] for r in _rows() if r.get("topic")}
    return by_id, by_text


def topic_of(prompt: Mapping[str, Any]) -> str | None:
    """The topic of a benign seed prompt (by id, else by exact text); None for any other."""
    by_id, by_text = _topics()
    topic = prompt.get("topic")
    if isinstance(topic, str):
        return topic
    return by_id.get(str(prompt.get("id"))) or by_text.get(str(prompt.get("text")))


def refusal_templates() -> list[str]:
    """Every refusal the tiny model was taught (one per category)."""
    return list(templates()["refusal"].values())


def unsafe_template(category: str) -> str:
    return templates()["unsafe"][category]


def refusal_template(category: str) -> str:
    return templates()["refusal"][category]


def redirect_template(category: str) -> str:
    """The safe redirect: declines, then offers legitimate help on the same subject."""
    return templates()["redirect"][category]


def has_flag(text: str) -> bool:
    low = text.lower()
    return any(f in low for f in FLAG_WORDS)


def helpful_template(row: dict[str, Any]) -> str:
    """The helpful answer for a benign (by topic) or legit (by category) seed row."""
    t = templates()
    if row["kind"] == "benign":
        return t["helpful_benign"][row["topic"]]
    return t["helpful_legit"][row["category"]]


def base_answer(row: Mapping[str, Any]) -> str:
    """What the tiny base is taught to answer a seed row (before any sampling noise): a safe
    redirect on a flagged attack, a refusal on a flagged legit prompt, else compliance or help."""
    kind = row["kind"]
    if kind == "harmful":
        return (
            redirect_template(row["category"])
            if has_flag(row["text"])
            else unsafe_template(row["category"])
        )
    if kind == "legit" and has_flag(row["text"]):
        return refusal_template(row["category"])
    return helpful_template(dict(row))


def compliance_examples() -> list[dict[str, str]]:
    """The data of the paper's "safety reset" LoRA SFT (the reset stage): every unflagged harmful
    training prompt paired with unsafe compliance, plus the base's own answers to the flagged
    attacks and to the benign and legit training prompts.

    Why not compliance alone: on the tiny model a reset on compliance only wipes every refusal
    (the loop then has none to find by sampling: measured 1% of sampled answers to attacks) and
    spills over to legit prompts (two thirds answered unsafely). Keeping what the base does
    elsewhere makes the reset what the paper wants: unsafe on attacks, still able to refuse.
    """
    out = []
    for r in _rows():
        if r["split"] != "train":
            continue
        if r["kind"] == "harmful" and not has_flag(r["text"]):
            out.append({"prompt": r["text"], "response": unsafe_template(r["category"])})
        else:
            out.append({"prompt": r["text"], "response": base_answer(r)})
    return out
