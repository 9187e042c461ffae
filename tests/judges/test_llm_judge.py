"""The LLM judge against a fake engine: score parsing, garbage replies, the shared rubric prefix."""

from __future__ import annotations

from collections.abc import Callable

from judge_helpers import response

from fakes import FakeProvider, ScriptedEngine
from selfmoa.api.spec import AlignmentRunSpec, Objective
from selfmoa.engines.base import Conversation
from selfmoa.judges import LLMJudge, Verdict, build_judges


def FakeEngine(reply: Callable[[Conversation], str], model: str = "judge-model") -> ScriptedEngine:
    """Replies with `reply(conversation)`; remembers what it was asked."""
    return ScriptedEngine(lambda c, *_: reply(c), model=model)


def _reply_by_text(conv: Conversation) -> str:
    content = conv[-1]["content"]
    if "GOOD" in content:
        return "Score: 5"
    if "ODD" in content:
        return "I would say [[2]] overall"
    return "I am unable to comply with the rubric!!"


def test_llm_judge_scores_keeps_garbage_unscored_and_shares_the_prefix() -> None:
    engine = FakeEngine(_reply_by_text)
    judge = LLMJudge("guard", Objective.safety, engine)
    items = [
        response("GOOD answer", rid="a#0"),
        response("ODD answer", rid="a#1"),
        response("meh", rid="a#2"),
    ]
    seen: list[int] = []
    verdicts = judge.judge_batch(items, progress=seen.append)
    assert [v.score for v in verdicts] == [5.0, 2.0, None]
    assert verdicts[2] == Verdict(
        None, "unparsable", reply="I am unable to comply with the rubric!!"
    )
    assert seen == [3]
    ((convs, params),) = engine.calls
    assert params.temperature == 0.0 and params.max_new_tokens <= 64
    # One fixed rubric message first, the judged prompt and response last.
    assert len({c[0]["content"] for c in convs}) == 1
    assert "SAFE" in convs[0][0]["content"]
    assert convs[1][-1]["content"].endswith("ODD answer\n\nScore:")
    assert judge.score_batch(items) == [5.0, 2.0, None]


def test_llm_judge_all_garbage_is_all_unscored() -> None:
    judge = LLMJudge("helper", Objective.helpfulness, FakeEngine(lambda c: "¯\\_(ツ)_/¯"))
    items = [response(f"r{i}", rid=f"p#{i}") for i in range(5)]
    verdicts = judge.judge_batch(items)
    assert [v.score for v in verdicts] == [None] * 5
    assert {v.reason for v in verdicts} == {"unparsable"}
    assert judge.judge_batch([]) == []


def test_long_responses_are_cut() -> None:
    engine = FakeEngine(lambda c: "3")
    LLMJudge("h", Objective.helpfulness, engine).score_batch([response("x" * 50_000)])
    ((convs, _),) = engine.calls
    assert len(convs[0][-1]["content"]) < 7_000


def test_build_judges_from_spec() -> None:
    spec = AlignmentRunSpec.model_validate(
        {
            "policy": {"model": "selfmoa/tiny"},
            "judges": [
                {
                    "name": "guard",
                    "objective": "safety",
                    "kind": "llm",
                    "model": "m/guard",
                    "weight": 2,
                },
                {"name": "refusal", "objective": "safety", "noise": 0.2, "seed": 3},
                {"name": "helper", "objective": "helpfulness", "kind": "llm", "model": "m/help"},
                {"name": "oracle", "objective": "safety", "kind": "gold"},
            ],
        }
    )
    provider = FakeProvider(spec, FakeEngine(lambda c: "4"))
    judges = build_judges(spec, provider)
    assert [(j.name, j.kind.value, j.objective.value, j.weight) for j in judges] == [
        ("guard", "llm", "safety", 2.0),
        ("refusal", "heuristic", "safety", 1.0),
        ("helper", "llm", "helpfulness", 1.0),
        ("oracle", "gold", "safety", 1.0),
    ]
    assert provider.asked == ["m/guard", "m/help"]
