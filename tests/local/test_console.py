"""The one-line stage summaries `selfmoa run` prints."""

from __future__ import annotations

from selfmoa.local.console import describe


def test_describe_picks_the_telling_figures() -> None:
    assert describe("pairs", {"pairs": 55, "mean_margin": 1.3988, "per_kind": {"x": 1}}) == (
        "pairs 55  mean margin 1.399"
    )
    line = describe(
        "judge",
        {"responses": 720, "mean_scores": {"safety": 2.98}, "unparsable": {"a": 2, "b": 1}},
    )
    assert line == "responses 720  mean safety 2.98  unparsable 3"
    assert describe(
        "evaluate", {"attack_success_rate": 0.5, "helpfulness": 0.6, "over_refusal": 0.1}
    ) == ("ASR 0.50  helpfulness 0.60  over-refusal 0.10")
    assert describe("evaluate", {}) == ""
    assert describe("train", {}) == ""
