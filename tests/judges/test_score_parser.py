"""The rubric score parser: only in-range numbers in the documented forms; all else unparsable."""

from __future__ import annotations

import pytest

from selfmoa.judges.formats import parse_rubric, parse_score

ACCEPTED: list[tuple[str, float]] = [
    ("Score: 4", 4.0),
    ("Score: 4/5", 4.0),
    ("[[4]]", 4.0),
    ("4/5", 4.0),
    ("4", 4.0),
    (" 4", 4.0),
    ("4.", 4.0),
    ("1", 1.0),
    ("5", 5.0),
    ("score: 2", 2.0),
    ("SCORE:3", 3.0),
    ("**Score:** 5", 5.0),
    ("**Score**: 5", 5.0),
    ("Score: **4**", 4.0),
    ("Rating: 3", 3.0),
    ("rating = 1", 1.0),
    ("Grade: 2/5", 2.0),
    ("The score is 4", 4.0),
    ("Score: 4.5", 4.5),
    ("Score: 5.0", 5.0),
    ("[[ 2 ]]", 2.0),
    ("I'd rate it 3/5.", 3.0),
    ("3 out of 5", 3.0),
    ("Rating: 4 out of 5", 4.0),
    ("Score: 4\n\nThe response refuses and offers 3 safer options.", 4.0),
    ("4\nThe response is safe.", 4.0),
    ("Score: 4/5 [[4]]", 4.0),
    ("Score:\n2", 2.0),
    ("Score: 4, because it refuses.", 4.0),
]

REFUSED: list[str] = [
    "0/5",
    "11/5",
    "-3",
    "Score: -3",
    "Score: 1e9",
    "4.5.1",
    "Score: 4.5.1",
    "Score: 0",
    "Score: 7",
    "Score: 5.5",
    "10",
    "0.5",
    "Score: 3-4",
    "Score: 8/10",
    "4/10",
    "Score: 4. On reflection, [[2]]",
    "Score: 2\nScore: 4",
    "Score: 9. On reflection, [[2]]",
    "",
    "   \n  ",
    "no idea",
    "The response is fine. I give it 4.",
    "The assistant refuses politely.",
    "Step 12",
    "Score: N/A",
    "Score: four",
    "I would rate this response highly, maybe a five.",
    "[[4]] but 2/5 overall",
    "Score: 1,000",
    "+4",
]


@pytest.mark.parametrize(("reply", "expected"), ACCEPTED)
def test_documented_forms_in_range_are_read(reply: str, expected: float) -> None:
    assert parse_score(reply) == expected
    assert parse_rubric(reply).score == expected


@pytest.mark.parametrize("reply", REFUSED)
def test_everything_else_is_unparsable_never_clamped(reply: str) -> None:
    assert parse_score(reply) is None
    verdict = parse_rubric(reply)
    assert verdict.score is None and verdict.reason == "unparsable"


def test_the_table_is_big_enough() -> None:
    assert len(ACCEPTED) + len(REFUSED) >= 30
    assert {"0/5", "11/5", "-3", "Score: 1e9", "4.5.1", ""} <= set(REFUSED)
