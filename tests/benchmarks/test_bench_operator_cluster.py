"""The control-plane benchmark's reading of Job events: what counts as a stage's completion (no
cluster)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fakes import load_file

BENCH = Path(__file__).resolve().parent / "bench_operator_cluster.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_file("bench_operator_cluster", BENCH)


def _job(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "r-i1-judge", "resourceVersion": "7"}, "status": status}


@pytest.mark.parametrize(
    ("status", "ended"),
    [
        # The watch's 30 s re-list replays a running Job as it was: not its completion.
        ({"startTime": "t", "active": 1}, False),
        ({}, False),
        ({"active": 0}, False),
        ({"succeeded": 1}, True),
        ({"failed": 1, "active": 1}, True),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, True),
        ({"conditions": [{"type": "Failed", "status": "True"}]}, True),
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, False),
        ({"conditions": [{"type": "Complete", "status": "False"}]}, False),
    ],
)
def test_only_a_status_that_says_the_stage_ended_is_its_completion(
    bench: ModuleType, status: dict[str, Any], ended: bool
) -> None:
    assert bench._ended(_job(status)) is ended
