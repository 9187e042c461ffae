"""The judge interface: score (prompt, response) for one objective on 1..5, or None.

A judge never raises for a bad reply: a reply it can't turn into a score is None, and the
caller counts it. Failures of the machinery (a dead model server) do raise: the stage fails and
is retried, rather than writing a judgment file full of holes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from selfmoa.api.spec import JudgeKind, Objective
from selfmoa.records import PromptRecord, ResponseRecord

#: Called with the number of items a judge has finished so far.
JudgeProgress = Callable[[int], None]

LOW, HIGH = 1.0, 5.0


def clamp(score: float) -> float:
    return min(HIGH, max(LOW, score))


class Judge(ABC):
    name: str
    objective: Objective
    kind: JudgeKind
    weight: float = 1.0

    def __init__(self, name: str, objective: Objective, *, weight: float = 1.0) -> None:
        self.name = name
        self.objective = objective
        self.weight = weight
        #: A few raw replies that could not be scored (for the stage summary).
        self.unparsable_examples: list[str] = []

    @abstractmethod
    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        """A score in 1..5 (or None) per item, in order."""

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
