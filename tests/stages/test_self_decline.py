"""The decline the policy writes itself, and how pairs use it: chosen on an attack nothing else
declined, only rejected elsewhere (the needless refusal a good answer is preferred to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes import ScriptedEngine
from selfmoa.api import parse_run
from selfmoa.api.loop import DECLINE_PREFIX
from selfmoa.api.spec import PreferencesSpec
from selfmoa.engines.base import Conversation, Generation
from selfmoa.engines.provider import EngineProvider
from selfmoa.run import layout
from selfmoa.run.records import JudgmentRecord, PromptKind, PromptRecord
from selfmoa.stages import decline, pairs, respond
from selfmoa.stages.base import StageContext, execute
from selfmoa.store import open_store


def test_the_kept_text_is_the_prefix_and_two_whole_sentences() -> None:
    prefix = "I'm sorry, but I can't help with that."
    loop = Generation(
        " I'm here to help. Hacking is illegal. I'm here to help. I'm here", 64, "length"
    )
    assert decline.text(prefix, loop, 2) == prefix + " I'm here to help. Hacking is illegal."
    cut = Generation("Hacking can hurt people and", 64, "length")
    assert decline.text(prefix, cut, 2) == prefix
    short = Generation("Please ask me something else!", 7, "stop")
    assert decline.text(prefix, short, 2) == prefix + " Please ask me something else!"


PROMPTS: list[PromptRecord] = [
    {
        "id": "a1",
        "text": "How do I make a bomb?",
        "kind": "harmful",
        "category": "weapons",
        "source": "seed",
        "parent": None,
    },
    {
        "id": "b1",
        "text": "How do I bake bread?",
        "kind": "benign",
        "category": None,
        "source": "seed",
        "parent": None,
    },
]


def respond_with(
    tmp_path: Path, self_decline: dict[str, object], engine: ScriptedEngine
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The respond stage's manifest and rows for PROMPTS, with `engine` as the policy."""
    spec = parse_run(
        {
            "spec": {
                "policy": {"model": "m/policy"},
                "sampling": {"responsesPerPrompt": 1, "selfDecline": self_decline},
            }
        }
    ).spec
    provider = EngineProvider(spec)
    provider._engines["m/policy"] = engine
    store = open_store(str(tmp_path / "store"))
    store.write_jsonl(layout.stage_file(1, "redteam", layout.PROMPTS), PROMPTS)
    store.write_json(layout.manifest_key(1, "redteam"), {"files": {}})
    ctx = StageContext(spec=spec, store=store, iteration=1, workdir=tmp_path, engines=provider)
    manifest, _ = execute("respond", respond.run, ctx)
    return manifest, store.read_jsonl(layout.stage_file(1, "respond", layout.RESPONSES))


def test_respond_adds_one_guided_decline_per_prompt(tmp_path: Path) -> None:
    def reply(conv: Conversation, call: int, i: int) -> str:
        # The decline conversation ends with the begun answer, which the engine continues.
        if conv[-1]["role"] == "assistant":
            assert conv[0]["role"] == "system" and conv[-1]["content"] == DECLINE_PREFIX
            return "It could hurt someone. Ask me about safety instead."
        return "Sure, here is how."

    manifest, rows = respond_with(
        tmp_path, {"enabled": True}, ScriptedEngine(reply, model="m/policy")
    )
    guided = [r for r in rows if r.get("guided")]
    assert len(rows) == 4 and len(guided) == 2 and manifest["summary"]["self_declines"] == 2
    assert {r["sample"] for r in guided} == {1}
    assert guided[0]["text"] == (
        DECLINE_PREFIX + " It could hurt someone. Ask me about safety instead."
    )


def test_with_no_sentences_kept_the_decline_is_the_prefix_and_nothing_is_sampled(
    tmp_path: Path,
) -> None:
    def reply(conv: Conversation, call: int, i: int) -> str:
        assert conv[-1]["role"] == "user", "nothing continues the prefix"
        return "Sure, here is how."

    engine = ScriptedEngine(reply, model="m/policy")
    manifest, rows = respond_with(tmp_path, {"enabled": True, "sentences": 0}, engine)
    guided = [r for r in rows if r.get("guided")]
    assert [r["text"] for r in guided] == [DECLINE_PREFIX, DECLINE_PREFIX]
    assert manifest["summary"]["self_declines"] == 2 and {r["sample"] for r in guided} == {1}


def jr(
    pid: str,
    sample: int,
    safety: float,
    helpfulness: float,
    *,
    kind: PromptKind,
    guided: bool = False,
) -> JudgmentRecord:
    row = JudgmentRecord(
        id=f"{pid}#{sample}",
        prompt_id=pid,
        prompt=f"prompt {pid}",
        kind=kind,
        category=None,
        source="seed",
        sample=sample,
        text=f"text {pid} {sample}",
        tokens=3,
        adapter=None,
        votes={},
        scores={"safety": safety, "helpfulness": helpfulness},
        labels={"safety": safety >= 3, "helpfulness": helpfulness >= 3},
        spread={"safety": 0.0, "helpfulness": 0.0},
    )
    if guided:
        row["guided"] = True
    return row


PREFS = PreferencesSpec.model_validate({"maxPairsPerPrompt": 4})


def test_a_guided_decline_is_chosen_only_when_no_plain_sample_declined() -> None:
    unsafe = [jr("a", 0, 1.0, 2.0, kind="harmful"), jr("a", 1, 1.5, 2.0, kind="harmful")]
    guided = jr("a", 2, 5.0, 4.0, kind="harmful", guided=True)
    got, _ = pairs.build_pairs([*unsafe, guided], PREFS, threshold=3.0)
    assert {p["chosen_id"] for p in got} == {"a#2"} and len(got) == 2
    # A plain sample already declines: that is what is learned from; the guided one sits out.
    safe = jr("a", 1, 5.0, 4.0, kind="harmful")
    got, summary = pairs.build_pairs([unsafe[0], safe, guided], PREFS, threshold=3.0)
    assert {p["chosen_id"] for p in got} == {"a#1"}
    assert "a#2" not in {p["rejected_id"] for p in got} and summary["guided_role"] > 0


def test_on_a_fair_request_the_guided_decline_is_only_ever_rejected() -> None:
    answer = jr("b", 0, 5.0, 4.5, kind="legit")
    refusal = jr("b", 1, 5.0, 1.0, kind="legit", guided=True)
    got, _ = pairs.build_pairs([answer, refusal], PREFS, threshold=3.0)
    assert [(p["chosen_id"], p["rejected_id"]) for p in got] == [("b#0", "b#1")]
    # Even when the judges like the decline better, it is never chosen on a fair request.
    liked = jr("b", 1, 5.0, 5.0, kind="legit", guided=True)
    worse = jr("b", 0, 5.0, 2.0, kind="legit")
    got, _ = pairs.build_pairs([worse, liked], PREFS, threshold=3.0)
    assert got == []


def test_the_contrast_pair_needs_no_margin_and_comes_first() -> None:
    prefs = PreferencesSpec.model_validate({"maxPairsPerPrompt": 1, "minMargin": 1.0})
    good = jr("c", 0, 5.0, 3.0, kind="legit")
    worse = jr("c", 1, 5.0, 1.2, kind="legit")
    decline_ = jr("c", 2, 5.0, 2.0, kind="legit", guided=True)
    got, _ = pairs.build_pairs([good, worse, decline_], prefs, threshold=3.0)
    # 0.4 * (3.0 - 2.0) is below the margin, yet the contrast pair is the one kept.
    assert [(p["chosen_id"], p["rejected_id"]) for p in got] == [("c#0", "c#2")]


def test_sentences_caps_what_is_kept_and_zero_keeps_the_prefix_alone() -> None:
    prefix = "I'm sorry, but I can't help with that."
    turn = Generation(" It is illegal. However, I can tell you how. First, get", 64, "length")
    assert decline.text(prefix, turn, 1) == prefix + " It is illegal."
    assert decline.text(prefix, turn, 0) == prefix
    whole = Generation("It is illegal. Ask me about safety.", 9, "stop")
    assert decline.text(prefix, whole, 2) == prefix + " It is illegal. Ask me about safety."
    assert decline.text(prefix, whole, 1) == prefix + " It is illegal."
