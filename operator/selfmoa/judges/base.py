"""The judge interface: a verdict on (prompt, response) for one objective: 1..5, or unscored.

A judge never raises for one bad item: a reply it can't turn into a score, or a request the
server refused for that item alone, is a `Verdict` with no score and the reason. The panel counts
them and fails the stage when a judge scored fewer items than its `min_coverage`, so a judge that
scores nothing can never pass for one that found everything safe.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from selfmoa.api.spec import JudgeKind, Objective
from selfmoa.run.records import PromptRecord, ResponseRecord

#: Called with the number of items a judge has finished so far.
JudgeProgress = Callable[[int], None]

LOW, HIGH = 1.0, 5.0


#: Why a verdict has no score: the reply didn't say one in the judge's format.
UNPARSABLE = "unparsable"
#: A judge without replies (heuristic, classifier, gold) gave no score.
NO_SCORE = "no score"


def clamp(score: float) -> float:
    return min(HIGH, max(LOW, score))


@dataclass(frozen=True)
class Verdict:
    """One judge's word on one item."""

    #: 1..5 (5: safe / helpful), or None: unscored.
    score: float | None
    #: Why there is no score: "unparsable", "http 400: <body>", "error: <message>".
    reason: str | None = None
    #: Whether the response refuses, where the judge says so (some guard models do).
    refusal: bool | None = None
    #: Harm categories the judge named (guard models' codes or names).
    categories: tuple[str, ...] = ()
    #: The start of the raw reply, kept for unscored items (the summary shows a few).
    reply: str | None = None
    #: Whether the response does not do what was asked (a refusal, or an answer to something
    #: else), where the judge can tell: what a human's refusal label says (`calibration`).
    declined: bool | None = None
    #: The response's outcome class, where the judge sorts responses into classes.
    outcome: str | None = None


class JudgeError(RuntimeError):
    """Judging can't go on: a misconfigured or misbehaving judge. The message is one line."""


class JudgeCoverageError(JudgeError):
    """A judge scored fewer items than its `min_coverage`: its scores must not become metrics."""


def reason_kind(reason: str) -> str:
    """The countable part of a reason: "http 400: blocked by filter" -> "http 400"."""
    return reason.partition(":")[0].strip()


class Judge(ABC):
    name: str
    objective: Objective
    kind: JudgeKind
    weight: float = 1.0

    def __init__(
        self, name: str, objective: Objective, *, weight: float = 1.0, min_coverage: float = 0.9
    ) -> None:
        self.name = name
        self.objective = objective
        self.weight = weight
        #: The fewest share of items this judge must score for its scores to be used.
        self.min_coverage = min_coverage

    @abstractmethod
    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        """A score in 1..5 (or None) per item, in order."""

    def judge_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[Verdict]:
        """A verdict per item, in order. Judges that know why an item is unscored override it."""
        return [
            Verdict(s) if s is not None else Verdict(None, NO_SCORE)
            for s in self.score_batch(items, progress)
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.objective.value})"


def prompt_of(item: ResponseRecord) -> PromptRecord:
    """The prompt a response answered, rebuilt from the response's provenance fields."""
    return PromptRecord(
        id=item["prompt_id"],
        text=item["prompt"],
        kind=item["kind"],
        category=item["category"],
        source=item["source"],
    )


def stable_seed(*parts: object) -> int:
    """A seed from the parts' text: the same in every process (unlike `hash()`)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


#: Entries a judge remembers (scores, kinds) before it starts over: bounds its memory.
MEMO_LIMIT: Final = 100_000


K = TypeVar("K")
V = TypeVar("V")


def remembered(memo: dict[K, V], key: K, compute: Callable[[], V]) -> V:
    """`memo[key]`, computed once; the memo starts over at `MEMO_LIMIT` entries."""
    if key not in memo:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[key] = compute()
    return memo[key]
