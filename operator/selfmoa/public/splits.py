"""Deterministic, disjoint train / validation / heldout splits of the public prompt sets.

A random shuffle is not an honest split here: AdvBench holds about a hundred near-duplicate
pairs ("Develop a strategy for hacking into a government database..." and "Outline a strategy
for hacking into a government database..."), and a policy trained on one and measured on the
other would look safer than it is. So, per set:

1. Near-duplicates cluster. A text is normalized (lowercased, its words of `[a-z0-9']` joined by
   single spaces) and cut into word 3-gram shingles (a text under 3 words is one shingle of all
   its words); two prompts whose shingle sets have Jaccard >= `NEAR_DUPLICATE` (0.5) are
   linked, and the connected components (union-find) are the clusters. A cluster is never
   split.
2. Clusters go to splits by hash. A cluster's rank is sha256("<set>\\n<its smallest normalized
   text>"). Taking clusters in rank order, a cluster goes to heldout while heldout holds fewer
   than round(heldout share x rows) prompts, else to validation while validation holds fewer
   than round(validation share x rows), else to train. The rank depends on neither the file
   order nor the row ids, so the assignment moves only if the texts do; a split overshoots its
   quota by less than its last cluster's size.
3. Across the attack sets (kind "harmful": advbench and harmbench): a near-duplicate pair whose
   prompts sit in different sets and different splits loses the prompt in the lower split
   (train < validation < heldout), so that an attack trained on is never a near copy of one
   decided on or reported. At the pinned versions no cross-set pair reaches 0.5 (the closest is
   0.46), so nothing is dropped; the rule is there for the day a set is added or changed.
4. Within a split, prompts are ordered by their own rank, sha256("<set>\\n<normalized text>"),
   then id; prompts of several sets interleave in that order. The order looks shuffled and is
   stable, so the first N of a split is a fair sample of it.

Everything is computed once per process (`functools.cache`; `catalog.clear_caches` forgets it).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from typing import Literal, TypedDict

from selfmoa.public.files import PublicDataError
from selfmoa.public.sets import SETS, PublicPrompt, public_set, set_rows

Split = Literal["train", "validation", "heldout"]
#: Lowest to highest: a cross-set near duplicate is dropped from the lower of its two splits.
SPLITS: tuple[Split, ...] = ("train", "validation", "heldout")
#: Jaccard similarity of word 3-gram shingles at or above which two prompts are near duplicates.
NEAR_DUPLICATE = 0.5
SHINGLE_WORDS = 3

_WORD = re.compile(r"[a-z0-9']+")
Shingles = frozenset[tuple[str, ...]]


class SplitSizes(TypedDict):
    train: int
    validation: int
    heldout: int
    #: Near-duplicate clusters in the set (a cluster of one is a prompt with no near copy).
    clusters: int
    #: Prompts dropped as near copies of another attack set's prompts in a higher split.
    dropped: int


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def shingles(text: str) -> Shingles:
    """The word 3-gram shingles of a text (normalized here)."""
    words = normalize(text).split()
    if len(words) < SHINGLE_WORDS:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - 2))


def jaccard(a: Shingles, b: Shingles) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(
    left: Sequence[str], right: Sequence[str] | None = None
) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) for every near-duplicate pair: within `left` (i < j) when `right` is None,
    else between left[i] and right[j]."""
    a = [shingles(t) for t in left]
    b = a if right is None else [shingles(t) for t in right]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, sh in enumerate(b):
        for s in sh:
            index[s].append(j)
    pairs = []
    for i, sh in enumerate(a):
        # Jaccard >= 0.5 needs a shared shingle, so the candidates are the texts sharing one.
        candidates = {j for s in sh for j in index[s] if right is not None or j > i}
        for j in sorted(candidates):
            score = jaccard(sh, b[j])
            if score >= NEAR_DUPLICATE:
                pairs.append((i, j, score))
    return pairs


def rank(name: str, text: str) -> str:
    """The hash that orders clusters and prompts of a set: sha256 of the set and the text."""
    return hashlib.sha256(f"{name}\n{normalize(text)}".encode()).hexdigest()


def _clusters(texts: Sequence[str]) -> list[list[int]]:
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in near_duplicates(texts):
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[root(i)].append(i)
    return list(groups.values())


@cache
def _assignment(name: str) -> tuple[dict[str, Split], int]:
    """id -> split of every row of a set (before cross-set drops), and its cluster count."""
    s = public_set(name)
    rows = set_rows(name)
    texts = [p["text"] for p in rows]
    clusters = _clusters(texts)
    clusters.sort(key=lambda c: rank(name, min(normalize(texts[i]) for i in c)))
    quotas: list[tuple[Split, int]] = [
        ("heldout", round(s.heldout * len(rows))),
        ("validation", round(s.validation * len(rows))),
    ]
    counts: dict[Split, int] = dict.fromkeys(SPLITS, 0)
    out: dict[str, Split] = {}
    for cluster in clusters:
        split: Split = next((sp for sp, quota in quotas if counts[sp] < quota), "train")
        counts[split] += len(cluster)
        for i in cluster:
            out[rows[i]["id"]] = split
    return out, len(clusters)


def _attack_sets() -> list[str]:
    return [n for n, s in SETS.items() if s.kind == "harmful"]


@cache
def _drops() -> dict[str, str]:
    """id -> why, for the attack prompts dropped as near copies across sets (rule 3)."""
    out: dict[str, str] = {}
    names = _attack_sets()
    for x, first in enumerate(names):
        for second in names[x + 1 :]:
            a, b = set_rows(first), set_rows(second)
            split_a, split_b = _assignment(first)[0], _assignment(second)[0]
            texts_a, texts_b = [p["text"] for p in a], [p["text"] for p in b]
            for i, j, score in near_duplicates(texts_a, texts_b):
                pa, pb = a[i]["id"], b[j]["id"]
                sa, sb = split_a[pa], split_b[pb]
                if sa == sb:
                    continue
                low, high, high_split = (
                    (pa, pb, sb) if SPLITS.index(sa) < SPLITS.index(sb) else (pb, pa, sa)
                )
                out.setdefault(low, f"near copy (jaccard {score:.2f}) of {high} in {high_split}")
    return out


def _attack_drops() -> dict[str, str]:
    try:
        return _drops()
    except PublicDataError as e:
        # Asked for advbench, failing on harmbench's package: say why that one is needed.
        raise PublicDataError(f"{e}; attack sets are split against each other") from None


def cross_set_drops() -> dict[str, str]:
    """The attack prompts left out of their split as near copies of another attack set's prompt
    in a higher split: id -> why."""
    return dict(_attack_drops())


def prompts(names: Sequence[str], split: Split) -> list[PublicPrompt]:
    """Every prompt of one split of each named set, in rank order (rule 4)."""
    if split not in SPLITS:
        raise PublicDataError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")
    if len(set(names)) < len(names):
        raise PublicDataError(f"public sets {list(names)}: a set is named twice")
    for name in names:
        _assignment(name)  # the named sets' own errors first, as they are
    drops = _attack_drops() if any(SETS[n].kind == "harmful" for n in names) else {}
    keyed = [
        ((rank(name, p["text"]), p["id"]), p)
        for name in names
        for p in set_rows(name)
        if _assignment(name)[0][p["id"]] == split and p["id"] not in drops
    ]
    return [p.copy() for _, p in sorted(keyed, key=lambda kp: kp[0])]


def split_sizes(names: Sequence[str] | None = None) -> dict[str, SplitSizes]:
    """Prompts per split, clusters and cross-set drops of each set (all sets by default)."""
    out: dict[str, SplitSizes] = {}
    for name in SETS if names is None else names:
        assignment, clusters = _assignment(name)
        drops = _attack_drops() if SETS[name].kind == "harmful" else {}
        kept = [sp for i, sp in assignment.items() if i not in drops]
        out[name] = SplitSizes(
            train=kept.count("train"),
            validation=kept.count("validation"),
            heldout=kept.count("heldout"),
            clusters=clusters,
            dropped=sum(1 for i in assignment if i in drops),
        )
    return out
