"""The package as a whole: one description per public prompt set (for the README and `--help`),
and the switch that forgets every cached file."""

from __future__ import annotations

from typing import TypedDict

from selfmoa.public import jailbreaks, labels, sets, splits
from selfmoa.public.files import PACKAGES
from selfmoa.public.sets import SETS
from selfmoa.public.splits import SplitSizes, split_sizes


class SetDescription(TypedDict):
    name: str
    kind: str
    rows: int
    licence: str
    #: The pip requirement the set is read from (installed with --no-deps).
    package: str
    #: Files inside the package directory.
    paths: list[str]
    description: str
    splits: SplitSizes


def describe() -> list[SetDescription]:
    """Every public prompt set with its provenance and split sizes (reads every set's files)."""
    sizes = split_sizes()
    return [
        SetDescription(
            name=s.name,
            kind=s.kind,
            rows=s.rows,
            licence=s.licence,
            package=PACKAGES[s.package],
            paths=[f"{s.package}/{p}" for p in s.paths],
            description=s.description,
            splits=sizes[s.name],
        )
        for s in SETS.values()
    ]


def clear_caches() -> None:
    """Forget every loaded file, split, label and template (tests; a process otherwise reads
    each file once)."""
    for f in (
        sets.set_rows,
        splits._assignment,
        splits._drops,
        labels._labels,
        jailbreaks._templates,
    ):
        f.cache_clear()
