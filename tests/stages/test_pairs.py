"""Preference pairs: scalarized, Pareto, margins, caps, missing scores, provenance; the stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selfmoa.api.spec import AlignmentRunSpec, PreferencesSpec
from selfmoa.engines.provider import EngineProvider
from selfmoa.run import layout
from selfmoa.run.records import JudgmentRecord, PromptKind
from selfmoa.stages import pairs
from selfmoa.stages.base import StageContext, StageError, StageOutput, execute
from selfmoa.store.file import FileStore


def jr(
    pid: str,
    sample: int,
    safety: float | None,
    helpfulness: float | None,
    *,
    text: str | None = None,
    kind: PromptKind = "harmful",
    gold: tuple[float, float] | None = None,
) -> JudgmentRecord:
    row = JudgmentRecord(
        id=f"{pid}#{sample}",
        prompt_id=pid,
        prompt=f"prompt {pid}",
        kind=kind,
        category="fraud" if kind != "benign" else None,
        source="template:roleplay",
        sample=sample,
        text=text if text is not None else f"response {pid} {sample}",
        tokens=5,
        adapter=None,
        votes={"safety": {"s1": safety}, "helpfulness": {"h1": helpfulness}},
        scores={"safety": safety, "helpfulness": helpfulness},
        labels={"safety": None, "helpfulness": None},
        spread={"safety": 0.0, "helpfulness": 0.0},
    )
    if gold is not None:
        row["gold"] = {"safety": gold[0], "helpfulness": gold[1]}
    return row


def prefs(**kw: Any) -> PreferencesSpec:
    """Margins, caps and strategies on their own: the acceptable-chosen rule (off by default)
    has its own tests."""
    return PreferencesSpec.model_validate(kw)


def build(
    rows: list[JudgmentRecord], spec: PreferencesSpec, *, use_gold: bool = False
) -> tuple[list[Any], dict[str, Any]]:
    return pairs.build_pairs(rows, spec, threshold=3.0, use_gold=use_gold)


def test_refusal_beats_unsafe_and_helpful_beats_refusal() -> None:
    rows = [
        jr("h", 0, 5, 1, text="I can't help with that."),
        jr("h", 1, 1, 3.5, text="Sure, step 1"),
        jr("h", 2, 1, 4.0, text="Sure, step 1 and 2"),
        jr("l", 0, 5, 3.5, text="Good question...", kind="legit"),
        jr("l", 1, 5, 1, text="I can't help with that.", kind="legit"),
    ]
    out, summary = build(rows, prefs())
    got = {(p["chosen_id"], p["rejected_id"]) for p in out}
    assert got == {("h#0", "h#1"), ("h#0", "h#2"), ("l#0", "l#1")}
    legit = next(p for p in out if p["prompt_id"] == "l")
    assert legit["margin"] == pytest.approx(1.0)  # exactly minMargin still counts
    assert summary["pairs"] == 3
    assert summary["per_kind"] == {"harmful": 2, "legit": 1}
    assert summary["per_category"] == {"fraud": 3}
    assert summary["per_strategy"] == {"scalarized": 3}
    assert summary["chosen_mean"]["safety"] == 5.0


def test_provenance_of_a_pair() -> None:
    rows = [jr("h", 0, 5, 1), jr("h", 3, 1, 3)]
    (p,), _ = build(rows, prefs())
    assert p["id"] == "h#0>3"
    assert (p["chosen"], p["rejected"]) == ("response h 0", "response h 3")
    assert (p["chosen_id"], p["rejected_id"]) == ("h#0", "h#3")
    assert p["chosen_scores"] == {"safety": 5, "helpfulness": 1}
    assert p["rejected_scores"] == {"safety": 1, "helpfulness": 3}
    assert p["votes"] == {"chosen": rows[0]["votes"], "rejected": rows[1]["votes"]}
    assert (p["kind"], p["category"], p["source"], p["prompt"]) == (
        "harmful",
        "fraud",
        "template:roleplay",
        "prompt h",
    )
    assert p["margin"] == pytest.approx(0.6 * 4 - 0.4 * 2)
    assert p["strategy"] == "scalarized"


def test_weights_are_normalized() -> None:
    rows = [jr("h", 0, 5, 1), jr("h", 1, 1, 1)]
    (p,), _ = build(rows, prefs(weights={"safety": 3, "helpfulness": 1}))
    assert p["margin"] == pytest.approx(0.75 * 4)


@pytest.mark.parametrize(("min_margin", "expected"), [(0.0, 3), (1.0, 2), (2.0, 1), (3.0, 0)])
def test_min_margin(min_margin: float, expected: int) -> None:
    # values: 5.0, 3.4, 2.6 -> margins 1.6, 2.4, 0.8
    rows = [jr("p", 0, 5, 5), jr("p", 1, 5, 1), jr("p", 2, 1, 5)]
    out, summary = build(rows, prefs(min_margin=min_margin, max_pairs_per_prompt=5))
    assert len(out) == expected
    assert summary["below_margin"] == 3 - expected
    assert all(p["margin"] >= min_margin - 1e-9 for p in out)


def test_max_pairs_per_prompt_prefers_largest_margins_then_unused_responses() -> None:
    # One unsafe sample, three refusals (equal margins), one helpful-but-unsafe-ish middle.
    rows = [
        jr("h", 0, 1, 4),
        jr("h", 1, 5, 1, text="refusal a"),
        jr("h", 2, 5, 1, text="refusal b"),
        jr("h", 3, 5, 1, text="refusal c"),
        jr("h", 4, 5, 5, text="best"),
    ]
    out, summary = build(rows, prefs(max_pairs_per_prompt=2, min_margin=0.5))
    assert len(out) == 2
    # The largest margin first (best vs unsafe), then a pair that reuses neither side.
    assert (out[0]["chosen_id"], out[0]["rejected_id"]) == ("h#4", "h#0")
    assert "h#0" not in (out[1]["chosen_id"], out[1]["rejected_id"])
    assert out[0]["margin"] >= out[1]["margin"]
    assert summary["capped"] == summary["candidates"] - 2


def test_identical_texts_and_missing_scores_are_skipped() -> None:
    rows = [
        jr("h", 0, 5, 1, text="  same  "),
        jr("h", 1, 1, 4, text="same"),
        jr("h", 2, None, 4),
        jr("h", 3, 1, None),
        jr("h", 4, 1, 4),
    ]
    out, summary = build(rows, prefs(max_pairs_per_prompt=5))
    assert [(p["chosen_id"], p["rejected_id"]) for p in out] == [("h#0", "h#4")]
    assert summary["skipped"] == {"duplicate_text": 1, "none_score": 2}
    assert all(p["chosen"].strip() != p["rejected"].strip() for p in out)


def test_a_zero_weight_objective_may_be_missing_for_scalarized_only() -> None:
    rows = [jr("h", 0, 5, None), jr("h", 1, 1, None)]
    out, _ = build(rows, prefs(weights={"safety": 1.0, "helpfulness": 0.0}))
    assert len(out) == 1
    out, summary = build(rows, prefs(strategy="pareto", weights={"safety": 1.0}))
    assert out == [] and summary["skipped"] == {"none_score": 2}


def test_pareto_needs_domination() -> None:
    rows = [
        jr("p", 0, 5, 5),
        jr("p", 1, 5, 1),  # dominated by 0
        jr("p", 2, 1, 4),  # dominated by 0, incomparable with 1
    ]
    out, summary = build(rows, prefs(strategy="pareto", min_margin=0.0, max_pairs_per_prompt=5))
    got = {(p["chosen_id"], p["rejected_id"]) for p in out}
    assert got == {("p#0", "p#1"), ("p#0", "p#2")}
    assert summary["not_dominating"] == 1
    assert all(p["strategy"] == "pareto" for p in out)
    # Scalarized would also pair 1 over 2 (3.4 vs 2.2).
    out, _ = build(rows, prefs(min_margin=0.0, max_pairs_per_prompt=5))
    assert ("p#1", "p#2") in {(p["chosen_id"], p["rejected_id"]) for p in out}


def test_gold_pairs_use_gold_scores() -> None:
    # The weak judges got it backwards; gold knows better.
    rows = [jr("h", 0, 1, 4, gold=(5, 1)), jr("h", 1, 5, 1, gold=(1, 3)), jr("h", 2, 3, 3)]
    weak, _ = build(rows, prefs())
    strong, summary = build(rows, prefs(), use_gold=True)
    assert (weak[0]["chosen_id"], weak[0]["rejected_id"]) == ("h#1", "h#0")
    assert [(p["chosen_id"], p["rejected_id"]) for p in strong] == [("h#0", "h#1")]
    assert strong[0]["chosen_scores"] == {"safety": 5, "helpfulness": 1}
    assert summary["skipped"] == {"no_gold": 1} and summary["scores"] == "gold"


def test_no_pairs_summary() -> None:
    out, summary = build([jr("p", 0, 3, 3)], prefs())
    assert out == [] and summary["pairs"] == 0 and summary["mean_margin"] is None


# ------------------------------------------------------------------------------ the stage


def make_ctx(tmp_path: Path, spec: dict[str, Any]) -> StageContext:
    s = AlignmentRunSpec.model_validate({"policy": {"model": "selfmoa/tiny"}, **spec})
    return StageContext(
        spec=s,
        store=FileStore(f"file://{tmp_path}"),
        iteration=2,
        workdir=tmp_path / "work",
        engines=EngineProvider(s),
    )


def write_judgments(ctx: StageContext, rows: list[JudgmentRecord]) -> None:
    def fake_judge(c: StageContext, out: StageOutput) -> dict[str, Any]:
        return {"responses": out.write_jsonl(layout.JUDGMENTS, rows)}  # type: ignore[arg-type]

    execute("judge", fake_judge, ctx)


ROWS = [
    jr("h", 0, 5, 4, gold=(5, 4)),
    jr("h", 1, 1, 3.5, gold=(1, 3)),
    jr("b", 0, 5, 4, kind="benign", gold=(5, 5)),
    jr("b", 1, 5, 1, kind="benign", gold=(5, 1)),
]


def test_pairs_stage(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {})
    write_judgments(ctx, ROWS)
    manifest, ran = execute("pairs", pairs.run, ctx)
    assert ran
    rows = ctx.store.read_jsonl(layout.stage_file(2, "pairs", layout.PAIRS))
    assert {(p["chosen_id"], p["rejected_id"]) for p in rows} == {("h#0", "h#1"), ("b#0", "b#1")}
    assert manifest["files"][layout.PAIRS]["rows"] == 2
    assert pairs.GOLD_PAIRS not in manifest["files"]
    assert manifest["summary"]["pairs"] == 2 and "gold" not in manifest["summary"]
    assert manifest["summary"]["mean_margin"] == pytest.approx((2.6 + 1.2) / 2)
    assert execute("pairs", pairs.run, ctx)[1] is False


def test_pairs_stage_with_ceiling_writes_gold_pairs(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"evaluation": {"goldJudge": True, "ceiling": True}})
    write_judgments(ctx, ROWS)
    manifest, _ = execute("pairs", pairs.run, ctx)
    gold = ctx.store.read_jsonl(layout.stage_file(2, "pairs", pairs.GOLD_PAIRS))
    assert {(p["chosen_id"], p["rejected_id"]) for p in gold} == {("h#0", "h#1"), ("b#0", "b#1")}
    assert gold[0]["chosen_scores"] == {"safety": 5, "helpfulness": 4}
    assert manifest["files"][pairs.GOLD_PAIRS]["rows"] == 2
    assert manifest["summary"]["gold"]["pairs"] == 2


def test_pairs_stage_ceiling_without_gold_scores_fails_clearly(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"evaluation": {"goldJudge": True, "ceiling": True}})
    write_judgments(ctx, [jr("h", 0, 5, 1), jr("h", 1, 1, 3)])
    with pytest.raises(StageError, match="no gold scores"):
        execute("pairs", pairs.run, ctx)


def test_pairs_stage_needs_the_judge_stage(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="judge"):
        execute("pairs", pairs.run, make_ctx(tmp_path, {}))


def test_gold_baseline_trains_on_gold_pairs(tmp_path: Path) -> None:
    # The weak judges got it backwards; the gold-supervised loop's own pairs follow gold.
    rows = [jr("h", 0, 1, 4, gold=(5, 4)), jr("h", 1, 5, 1, gold=(1, 3))]
    ctx = make_ctx(tmp_path, {"evaluation": {"goldJudge": True, "goldBaseline": True}})
    write_judgments(ctx, rows)
    manifest, _ = execute("pairs", pairs.run, ctx)
    out = ctx.store.read_jsonl(layout.stage_file(2, "pairs", layout.PAIRS))
    assert [(p["chosen_id"], p["rejected_id"]) for p in out] == [("h#0", "h#1")]
    assert manifest["summary"]["scores"] == "gold"


def test_gold_baseline_without_gold_scores_fails_clearly(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"evaluation": {"goldJudge": True, "goldBaseline": True}})
    write_judgments(ctx, [jr("h", 0, 5, 1), jr("h", 1, 1, 3)])
    with pytest.raises(StageError, match="goldBaseline"):
        execute("pairs", pairs.run, ctx)


def test_the_summary_says_what_was_sampled_and_what_was_chosen(tmp_path: Path) -> None:
    from selfmoa.tiny.seeds import templates

    t = templates()
    rows = [
        jr("h", 0, 5, 4, text=t["refusal"]["fraud"], gold=(5, 4)),
        jr("h", 1, 1, 2, text=t["unsafe"]["fraud"], gold=(1, 2)),
        jr("h", 2, 3, 1, text=t["helpful_benign"]["travel"], gold=(3, 1)),
        jr("h", 3, 5, 5, text=t["redirect"]["fraud"], gold=(5, 5)),
    ]
    ctx = make_ctx(tmp_path, {"evaluation": {"goldJudge": True}})
    write_judgments(ctx, rows)
    manifest, _ = execute("pairs", pairs.run, ctx)
    o = manifest["summary"]["outcomes"]
    assert o["sampled"]["source"] == "gold"
    assert o["sampled"]["by_kind"]["harmful"] == {
        "deflection": 0.25,
        "redirect": 0.25,
        "refusal": 0.25,
        "unsafe": 0.25,
    }
    # Two pairs per prompt, largest margins first: the redirect and the refusal are chosen.
    assert o["chosen"]["by_kind"]["harmful"] == {"redirect": 0.5, "refusal": 0.5}


def test_only_an_acceptable_response_is_chosen() -> None:
    rows = [
        # Harmful: garbled text (safe-ish, unhelpful) is less bad than the unsafe answer...
        jr("h", 0, 3, 1, text="x x x"),
        jr("h", 1, 1, 1, text="Sure, step 1"),
        # ...and on a benign prompt a refusal is less bad than nonsense.
        jr("b", 0, 5, 1, kind="benign", text="I can't help with that."),
        jr("b", 1, 2, 1, kind="benign", text="y y y"),
        # A good answer is still chosen over the refusal.
        jr("b", 2, 5, 4.5, kind="benign", text="Here is how."),
    ]
    strict = PreferencesSpec.model_validate({"max_pairs_per_prompt": 4, "acceptable_chosen": True})
    out, summary = build(rows, strict)
    assert {(p["chosen_id"], p["rejected_id"]) for p in out} == {("b#2", "b#0"), ("b#2", "b#1")}
    assert summary["chosen_not_acceptable"] == 2
    loose, _ = build(rows, prefs(max_pairs_per_prompt=4))
    assert {("h#0", "h#1"), ("b#0", "b#1")} <= {(p["chosen_id"], p["rejected_id"]) for p in loose}
    # Acceptable means good on every weighted objective; an unweighted one doesn't count.
    safety_only = PreferencesSpec.model_validate(
        {"weights": {"safety": 1, "helpfulness": 0}, "acceptable_chosen": True}
    )
    out, _ = build(rows, safety_only)
    assert ("h#0", "h#1") in {(p["chosen_id"], p["rejected_id"]) for p in out}


def with_category(row: JudgmentRecord, category: str | None) -> JudgmentRecord:
    row["category"] = category
    return row


CONTRAST_ROWS = [
    # Two attacks; the stronger pair (margin 3.2) is the first to get a contrast.
    jr("h1", 0, 5, 4, text="I won't help with fraud, but report it to your bank."),
    jr("h1", 1, 1, 2, text="Sure, step 1: open a fake account."),
    jr("h2", 0, 5, 4, text="I can't help with that."),
    jr("h2", 1, 2, 2, text="Maybe try this."),
    # Helpfulness prompts: a benign one and a legit one of the attacks' category (fraud)...
    jr("b", 0, 5, 4, kind="benign", text="Boil the potatoes first."),
    jr("l", 0, 5, 4.5, kind="legit", text="Check the sender and call the bank."),
    jr("l", 1, 5, 1, kind="legit", text="I can't help with that."),
    # ...and one whose best answer the judges call unhelpful: never a contrast's chosen side.
    jr("x", 0, 5, 2, kind="benign", text="Something about another topic."),
]


def test_decline_contrast_rejects_the_decline_on_a_fair_request() -> None:
    off, summary = build(CONTRAST_ROWS, prefs(max_pairs_per_prompt=1))
    assert summary["contrast"] == 0 and {p["strategy"] for p in off} == {"scalarized"}
    out, summary = build(CONTRAST_ROWS, prefs(max_pairs_per_prompt=1, decline_contrast=1))
    contrast = [p for p in out if p["strategy"] == "contrast"]
    assert summary["contrast"] == 2 == len(contrast)
    assert summary["per_strategy"] == {"contrast": 2, "scalarized": 3}
    first, second = contrast
    # The strongest attack pair's decline, on the legit prompt of its category first.
    assert (first["prompt_id"], first["chosen_id"], first["rejected_id"]) == ("l", "l#0", "h1#0")
    assert first["rejected"] == "I won't help with fraud, but report it to your bank."
    assert first["id"] == "l#0>h1#0" and first["kind"] == "legit"
    # Rejected: the decline's own safety, the rubric's helpfulness of a refusal.
    assert first["rejected_scores"] == {"safety": 5, "helpfulness": 1.0}
    assert first["margin"] == pytest.approx(0.4 * (4.5 - 1.0))
    assert first["votes"]["rejected"] == {}
    # Each prompt once: the next attack gets the benign prompt, never the unhelpful one.
    assert (second["prompt_id"], second["rejected_id"]) == ("b", "h2#0")
    assert all(p["prompt_id"] != "x" for p in out)


def test_decline_contrast_is_a_share_of_the_attack_pairs() -> None:
    out, summary = build(CONTRAST_ROWS, prefs(max_pairs_per_prompt=1, decline_contrast=0.5))
    assert summary["contrast"] == 1
    assert [p["rejected_id"] for p in out if p["strategy"] == "contrast"] == ["h1#0"]
    # No attack pairs, no contrast; a category no legit prompt shares takes any fair prompt.
    fair = [r for r in CONTRAST_ROWS if r["kind"] != "harmful"]
    assert build(fair, prefs(decline_contrast=1))[1]["contrast"] == 0
    other = [with_category(r, "weapons") if r["kind"] == "harmful" else r for r in CONTRAST_ROWS]
    out, _ = build(other, prefs(max_pairs_per_prompt=1, decline_contrast=1))
    assert [p["prompt_id"] for p in out if p["strategy"] == "contrast"] == ["b", "l"]


def test_outcomes_from_weak_judges_need_a_stated_refusal() -> None:
    stated = jr("h", 0, 5, 4)
    stated["refusal"] = {"guard": True}
    silent = jr("h", 1, 5, 4)  # a keyword judge's silence is no class
    unsafe = jr("h", 2, 1, 2)
    unsafe["refusal"] = {"guard": False}
    helpful = jr("b", 0, 5, 1, kind="benign")  # the rubric's "refuses"
    summary = pairs.outcomes([stated, silent, unsafe, helpful], [], threshold=3.0)
    assert summary["sampled"]["source"] == "judges"
    assert summary["sampled"]["by_kind"] == {
        "benign": {"refusal": 1.0},
        "harmful": {"refusal": 0.5, "unsafe": 0.5},
    }
    assert summary["chosen"] is None
