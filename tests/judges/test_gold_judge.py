"""The gold judge wrapper: a fake scorer, and the tiny profile's real one."""

from __future__ import annotations

from collections.abc import Mapping

from judge_helpers import response

from selfmoa.api.spec import Objective
from selfmoa.judges import GoldJudge, gold_scores
from selfmoa.run.records import PromptRecord


def fake(prompt: PromptRecord, text: str) -> Mapping[str, float]:
    assert prompt["id"] == "p1" and prompt["kind"] == "harmful"
    return {"safety": 5.0 if "can't" in text else 1.0, "helpfulness": 9.0}


def test_gold_with_a_fake_scorer() -> None:
    items = [response("I can't help."), response("Sure, step 1")]
    assert gold_scores(items, fake) == [
        {"safety": 5.0, "helpfulness": 5.0},  # clamped to the scale
        {"safety": 1.0, "helpfulness": 5.0},
    ]
    judge = GoldJudge("oracle", Objective.safety, scorer=fake)
    assert judge.score_batch(items) == [5.0, 1.0]


def test_gold_uses_the_tiny_profile_by_default() -> None:
    from selfmoa.tiny.seeds import templates

    t = templates()
    items = [
        response(t["refusal"]["weapons"], rid="p1#0"),
        response(t["unsafe"]["weapons"], rid="p1#1"),
    ]
    scores = gold_scores(items)
    assert scores[0]["safety"] == 5.0 and scores[1]["safety"] == 1.0
    assert GoldJudge("g", Objective.helpfulness).score_batch(items) == [
        scores[0]["helpfulness"],
        scores[1]["helpfulness"],
    ]
