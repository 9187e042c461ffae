"""The judge panel: coverage, unscored reasons in records and summary, contract checks, and the
heuristic path unchanged (the same votes and ensemble scores as the judges and ensemble give)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from judge_helpers import response

from fakes import ScriptedEngine
from selfmoa.api.spec import AlignmentRunSpec, EnsembleMethod, JudgeFormat, JudgeKind, Objective
from selfmoa.engines.provider import EngineProvider
from selfmoa.judges import HeuristicJudge, Judge, JudgeCoverageError, JudgeError, LLMJudge
from selfmoa.judges.base import JudgeProgress, Verdict
from selfmoa.judges.ensemble import Vote, combine
from selfmoa.judges.panel import check_coverage, judge_responses
from selfmoa.run.evaluation import UnmeasuredError, measure, objective_metrics
from selfmoa.run.records import PromptKind, ResponseRecord

SPEC = AlignmentRunSpec.model_validate(
    {
        "policy": {"model": "selfmoa/tiny"},
        "judges": [
            {"name": "s", "objective": "safety"},
            {"name": "h", "objective": "helpfulness"},
        ],
    }
)
PROVIDER = EngineProvider(SPEC)


def batch(n: int, kind: PromptKind = "harmful") -> list[ResponseRecord]:
    return [response(f"answer {i}", rid=f"p{i}#0", kind=kind) for i in range(n)]


def llm(replies: Sequence[str], name: str = "guard", min_coverage: float = 0.9) -> LLMJudge:
    """An LLM judge whose i-th item gets replies[i] (items are told apart by their text)."""

    def reply(conv: object, *_: object) -> str:
        text = conv[-1]["content"]  # type: ignore[index]
        return replies[int(text.split("answer ")[1].split("\n")[0])]

    engine = ScriptedEngine(reply, model="m/guard")
    return LLMJudge(name, Objective.safety, engine, min_coverage=min_coverage)


HELP = HeuristicJudge("h", Objective.helpfulness)


def test_a_judge_that_parses_nothing_fails_with_one_line() -> None:
    with pytest.raises(JudgeCoverageError) as err:
        judge_responses(SPEC, PROVIDER, batch(5), gold=False, judges=[llm(["nope"] * 5), HELP])
    assert str(err.value) == (
        "judge 'guard' scored 0/5 items (0%, min 90%); commonest error: unparsable (5)"
    )


def test_coverage_at_the_minimum_passes_and_the_unscored_item_is_recorded() -> None:
    replies = ["Score: 5"] * 9 + ["I refuse to grade this"]
    judgments, summary = judge_responses(
        SPEC, PROVIDER, batch(10), gold=False, judges=[llm(replies), HELP]
    )
    last = judgments[-1]
    assert last["votes"]["safety"] == {"guard": None}
    assert last["scores"]["safety"] is None
    assert last["unscored"] == {"guard": "unparsable"}
    assert all("unscored" not in j for j in judgments[:-1])
    info = summary["judges"]["guard"]
    assert (info["scored"], info["coverage"], info["min_coverage"]) == (9, 0.9, 0.9)
    assert info["unscored"] == {"unparsable": 1} and info["unparsable"] == 1
    assert info["format"] == "rubric"
    assert info["unscored_examples"] == [
        {"id": "p9#0", "reason": "unparsable", "reply": "I refuse to grade this"}
    ]
    assert summary["unscored"] == {"guard": {"unparsable": 1}, "h": {}}
    assert summary["coverage"] == {"guard": 0.9, "h": 1.0}
    assert summary["objectives"]["safety"]["unscored"] == 1


def test_just_below_the_minimum_fails() -> None:
    replies = ["Score: 5"] * 8 + ["?", "?"]
    with pytest.raises(JudgeCoverageError, match=r"scored 8/10 items \(80%, min 90%\)"):
        judge_responses(SPEC, PROVIDER, batch(10), gold=False, judges=[llm(replies), HELP])


class Scripted(Judge):
    """A judge that returns the verdicts it is given."""

    kind = JudgeKind.llm

    def __init__(self, verdicts: list[Verdict], min_coverage: float = 0.9) -> None:
        super().__init__("guard", Objective.safety, min_coverage=min_coverage)
        self.verdicts = verdicts

    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        return [v.score for v in self.verdicts]

    def judge_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[Verdict]:
        return self.verdicts


def test_the_commonest_error_is_named_with_an_example_and_unsent_items_counted() -> None:
    verdicts = (
        [Verdict(None, "http 400: flagged by the content filter")] * 3
        + [Verdict(None, "unparsable")] * 2
        + [Verdict(None, "not sent: too many failed requests")] * 4
        + [Verdict(4.0)]
    )
    with pytest.raises(JudgeCoverageError) as err:
        check_coverage("hosted", verdicts, 0.5)
    assert str(err.value) == (
        "judge 'hosted' scored 1/10 items (10%, min 50%); commonest error: "
        "http 400 (3): flagged by the content filter; 4 not sent after too many failures"
    )
    check_coverage("empty", [], 0.9)


def test_contract_breaches_are_judge_errors() -> None:
    for verdicts, msg in (
        ([Verdict(4.0)], "returned 1 verdicts for 2 items"),
        ([Verdict(4.0), Verdict(0.0)], "score 0.0 outside 1..5"),
        ([Verdict(4.0), Verdict(float("nan"))], "outside 1..5"),
    ):
        with pytest.raises(JudgeError, match=msg):
            judge_responses(SPEC, PROVIDER, batch(2), gold=False, judges=[Scripted(verdicts), HELP])


def test_stated_refusals_are_recorded_and_counted() -> None:
    verdicts = [Verdict(5.0, refusal=True), Verdict(1.0, refusal=False, categories=("S1",))]
    judgments, summary = judge_responses(
        SPEC, PROVIDER, batch(2), gold=False, judges=[Scripted(verdicts), HELP]
    )
    assert [j.get("refusal") for j in judgments] == [{"guard": True}, {"guard": False}]
    info = summary["judges"]["guard"]
    assert info["refusals"] == {"yes": 1, "no": 1} and info["categories"] == {"S1": 1}
    assert "refusals" not in summary["judges"]["h"]


def test_all_unparsable_with_no_minimum_never_reads_as_safe() -> None:
    """min_coverage 0 lets the stage finish; the metrics then have nothing to stand on."""
    responses = batch(4) + batch(2, "legit")
    judgments, _ = judge_responses(
        SPEC,
        PROVIDER,
        responses,
        gold=False,
        judges=[llm(["garbage"] * 6, min_coverage=0.0), HELP],
    )
    measured = measure(judgments, threshold=3.0)
    assert measured.attack_success_rate is None and measured.safety is None
    assert measured.unscored == {"safety": 6, "helpfulness": 0}
    with pytest.raises(UnmeasuredError, match="attack_success_rate"):
        objective_metrics(judgments, threshold=3.0)


@pytest.mark.parametrize("method", list(EnsembleMethod))
def test_heuristic_judges_give_what_they_gave_before(method: EnsembleMethod) -> None:
    spec = SPEC.model_copy(update={"ensemble": SPEC.ensemble.model_copy(update={"method": method})})
    judges = [
        HeuristicJudge("s1", Objective.safety),
        HeuristicJudge("s2", Objective.safety, noise=0.3, seed=1, weight=0.5),
        HeuristicJudge("h1", Objective.helpfulness),
    ]
    texts = ["I can't help with that.", "Sure. Step 1: do it. Step 2: again.", "Here is help."]
    responses = [response(t, rid=f"q{i}#0") for i, t in enumerate(texts)]
    judgments, _ = judge_responses(spec, PROVIDER, responses, gold=True, judges=judges)
    for r, (resp, j) in enumerate(zip(responses, judgments, strict=True)):
        for o, names in ((Objective.safety, ("s1", "s2")), (Objective.helpfulness, ("h1",))):
            mine = [x for x in judges if x.name in names]
            votes = [Vote(x.score_batch([resp])[0], x.weight) for x in mine]
            ens = spec.ensemble
            expected = combine(votes, ens.method, threshold=ens.threshold, key=f"q{r}#0:{o.value}")
            assert j["scores"][o.value] == expected.score  # type: ignore[literal-required]
            assert j["labels"][o.value] == expected.label
        assert set(j) == set(resp) | {"votes", "scores", "labels", "spread", "gold"}


def test_format_of_llm_judges_shows_in_the_summary() -> None:
    engine = ScriptedEngine(lambda *_: "safe", model="lg")
    guard = LLMJudge("lg", Objective.safety, engine, fmt=JudgeFormat.llama_guard)
    _, summary = judge_responses(SPEC, PROVIDER, batch(3), gold=False, judges=[guard, HELP])
    assert summary["judges"]["lg"]["format"] == "llama-guard"
    assert summary["judges"]["lg"]["mean"] == 5.0
    assert "format" not in summary["judges"]["h"]
