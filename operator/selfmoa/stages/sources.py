"""Where prompts come from: one resolver for every spec field that names a prompt source.

A source is `builtin` (the tiny profile's seed data), `public:SET[,SET]` (public sets read from
PyPI packages, `selfmoa.public`), or a path/URI of a JSONL file. Each field takes its own split
of a built-in or public source, so the prompts the loop trains on, the ones the gate decides on
and the ones the run reports never meet:

    redTeam.seeds, helpfulness.prompts  -> train
    evaluation.validation               -> validation
    evaluation.heldout                  -> heldout
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Literal

from selfmoa.api.base import public_sets
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run.records import PromptRecord
from selfmoa.stages.base import StageError, read_jsonl_source

Split = Literal["train", "validation", "heldout"]
_KINDS = ("harmful", "benign", "legit")


def public_prompts(source: str, split: Split, *, field: str) -> list[PromptRecord] | None:
    """The `split` of the public sets a `public:` source names (None: not a public source);
    a set that can't be read (its package missing) is a `StageError` naming the field."""
    try:
        names = public_sets(source)
    except ValueError as e:
        raise StageError(f"{field}: {e}") from None
    if names is None:
        return None
    from selfmoa import public

    try:
        # Copies: the public rows are cached for the whole process.
        return [PromptRecord(**p) for p in public.prompts(names, split)]
    except public.PublicDataError as e:
        raise StageError(f"{field}: {e}") from None


def file_prompts(
    source: str, spec: AlignmentRunSpec, *, field: str, kind: str | None = None
) -> list[PromptRecord]:
    """Prompt rows of a JSONL file: `text` (or `prompt`), optional id, kind, category, and a
    `reference` answer; `kind` is the default for rows without one."""
    out: list[PromptRecord] = []
    for i, row in enumerate(read_jsonl_source(source, spec, field=field)):
        text = row.get("text") or row.get("prompt")
        row_kind = row.get("kind", kind)
        if not isinstance(text, str) or row_kind not in _KINDS:
            raise StageError(f"{field}: row {i + 1} needs text and kind harmful|benign|legit")
        rec: PromptRecord = {
            "id": str(row.get("id") or f"f-{row_kind}-{i:04d}"),
            "text": text,
            "kind": row_kind,
            "category": row.get("category"),
            "source": str(row.get("source") or "file"),
            "parent": None,
        }
        if isinstance(row.get("reference"), str):
            rec["reference"] = row["reference"]
        out.append(rec)
    return out


def prompts_of(
    spec: AlignmentRunSpec,
    source: str,
    *,
    split: Split,
    field: str,
    builtin: Callable[[], list[PromptRecord]],
    kind: str | None = None,
) -> list[PromptRecord]:
    """The prompts of one source for one field (`builtin`: the tiny seed data's accessor)."""
    if source == "builtin":
        return builtin()
    public = public_prompts(source, split, field=field)
    if public is not None:
        return public
    return file_prompts(source, spec, field=field, kind=kind)


def attack_seeds(spec: AlignmentRunSpec) -> dict[str, list[PromptRecord]]:
    """`redTeam.seeds` per harm category of `redTeam.categories` (train split; seeds of other
    categories are not used: a quota exists only for the categories the spec attacks)."""
    return _attack_seeds(spec.red_team.seeds, tuple(spec.red_team.categories), spec)


@cache
def _cached_public(source: str) -> tuple[PromptRecord, ...]:
    return tuple(public_prompts(source, "train", field="redTeam.seeds") or [])


def _attack_seeds(
    source: str, categories: tuple[str, ...], spec: AlignmentRunSpec
) -> dict[str, list[PromptRecord]]:
    if source == "builtin":
        from selfmoa.tiny import seeds

        return {c: seeds.attack_seeds(c) for c in categories}
    rows = (
        list(_cached_public(source))
        if source.startswith("public:")
        else file_prompts(source, spec, field="redTeam.seeds", kind="harmful")
    )
    out: dict[str, list[PromptRecord]] = {c: [] for c in categories}
    for row in rows:
        if row["kind"] == "harmful" and row["category"] in out:
            out[str(row["category"])].append(row)
    return out
