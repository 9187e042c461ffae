"""The one filter every redteam candidate passes, whatever made it.

Length bounds, never a held-out prompt, no exact duplicate (normalized text) and no near duplicate
(Jaccard similarity of word 3-grams at or above the spec's threshold).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.stages.base import StageError, read_jsonl_source
from selfmoa.stages.sources import Split, public_prompts
from selfmoa.tiny import seeds


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def shingles(text: str) -> frozenset[str]:
    words = normalize(text).split()
    if len(words) < 3:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + 3]) for i in range(len(words) - 2))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class PromptFilter:
    """Accepts a prompt once: length-checked, not held out, not a (near) duplicate."""

    def __init__(self, *, min_chars: int, max_chars: int, threshold: float, banned: Iterable[str]):
        self.min_chars, self.max_chars, self.threshold = min_chars, max_chars, threshold
        self.banned = {normalize(t) for t in banned}
        self.seen: set[str] = set()
        self.kept: list[frozenset[str]] = []
        self.dropped: Counter[str] = Counter()

    def accept(self, text: str) -> bool:
        reason = self._rejection(text.strip())
        if reason is not None:
            self.dropped[reason] += 1
            return False
        return True

    def _rejection(self, text: str) -> str | None:
        """Why `text` is dropped (None: kept, and remembered)."""
        if not (self.min_chars <= len(text) <= self.max_chars):
            return "length"
        norm = normalize(text)
        if norm in self.banned:
            return "heldout"
        if norm in self.seen:
            return "duplicate"
        sh = shingles(text)
        if any(jaccard(sh, other) >= self.threshold for other in self.kept):
            return "near_duplicate"
        self.seen.add(norm)
        self.kept.append(sh)
        return None


def heldout_texts(spec: AlignmentRunSpec) -> list[str]:
    """Texts that must never appear in training prompts: the held-out test set and the
    validation split the gate decides on (built in, public sets' splits, and the user's files
    when given)."""
    texts = seeds.evaluation_texts()
    ev = spec.evaluation
    splits: tuple[tuple[str, Split], ...] = ((ev.heldout, "heldout"), (ev.validation, "validation"))
    for source, split in splits:
        if source in ("builtin", "none"):
            continue
        # The evaluate stage reports a missing file or package; here it just bans nothing more.
        with contextlib.suppress(StageError):
            public = public_prompts(source, split, field=f"evaluation.{split}")
            if public is not None:
                texts += [p["text"] for p in public]
                continue
            texts += [
                str(r.get("text") or r.get("prompt") or "")
                for r in read_jsonl_source(source, spec, field=f"evaluation.{split}")
            ]
    return texts


def filter_for(spec: AlignmentRunSpec) -> PromptFilter:
    """The filter of one redteam stage, from `spec.redTeam`."""
    rt = spec.red_team
    return PromptFilter(
        min_chars=rt.min_chars,
        max_chars=rt.max_chars,
        threshold=rt.near_duplicate_threshold,
        banned=heldout_texts(spec),
    )
