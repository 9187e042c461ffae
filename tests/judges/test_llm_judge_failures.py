"""The LLM judge when requests fail: one bad item is unscored with its reason and the rest are
scored; a dead server stops early. Also guard formats end to end through the judge."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from judge_helpers import response

from fakes import FakeProvider, ScriptedEngine
from selfmoa.api.exits import Exit, exit_for
from selfmoa.api.spec import AlignmentRunSpec, JudgeFormat, Objective
from selfmoa.engines.base import (
    Conversation,
    EngineError,
    Generation,
)
from selfmoa.engines.http import EndpointUnavailable
from selfmoa.engines.openai_engine import HTTPStatusEngineError, OpenAIEngine
from selfmoa.judges import JudgeError, LLMJudge, build_judges
from selfmoa.judges.llm import NOT_SENT, failure_reason
from selfmoa.run.records import ResponseRecord


def items(*texts: str) -> list[ResponseRecord]:
    return [response(t, rid=f"p{i}#0") for i, t in enumerate(texts)]


def behind_a_content_filter(conversation: Conversation, *_: object) -> str:
    """A hosted judge behind a content filter: a batch holding a FILTERED item fails with HTTP
    400 (the engine fails the whole call); a GARBLED item fails after retries."""
    text = conversation[-1]["content"]
    if "FILTERED" in text:
        raise HTTPStatusEngineError("http://judge/v1/chat/completions", 400, "content filter")
    if "GARBLED" in text:
        raise EngineError("POST http://judge failed after 5 attempts: reply is not JSON")
    return "Score: 4"


def test_one_refused_and_one_broken_item_are_unscored_and_the_rest_scored() -> None:
    engine = ScriptedEngine(behind_a_content_filter, model="hosted/judge", tokens=2)
    judge = LLMJudge("guard", Objective.safety, engine, min_coverage=0.5)
    seen: list[int] = []
    verdicts = judge.judge_batch(items("ok", "FILTERED", "ok", "GARBLED", "ok"), seen.append)
    assert [v.score for v in verdicts] == [4.0, None, 4.0, None, 4.0]
    assert verdicts[1].reason == "http 400: content filter"
    assert verdicts[3].reason == (
        "error: POST http://judge failed after 5 attempts: reply is not JSON"
    )
    # The batch, then each item on its own.
    assert [len(convs) for convs, _ in engine.calls] == [5, 1, 1, 1, 1, 1]
    assert seen[-1] == 5


def test_a_dead_server_stops_once_coverage_is_lost() -> None:
    def dead(*_: object) -> str:
        raise EngineError("POST http://judge failed after 5 attempts: ConnectError")

    engine = ScriptedEngine(dead)
    judge = LLMJudge("guard", Objective.safety, engine, min_coverage=0.9)
    verdicts = judge.judge_batch(items(*["x"] * 40))
    assert all(v.score is None for v in verdicts)
    # 40 items at 90% allow 4 failures: the 5th ends it (one batch + 5 single requests).
    assert len(engine.calls) == 1 + 5
    assert sum(v.reason == NOT_SENT for v in verdicts) == 35
    assert verdicts[0].reason == "error: POST http://judge failed after 5 attempts: ConnectError"


def test_failure_reasons_are_short_and_one_line() -> None:
    long = HTTPStatusEngineError("http://j", 400, "blocked\n" + "x" * 1000)
    reason = failure_reason(long)
    assert reason.startswith("http 400: blocked x") and len(reason) < 200 and "\n" not in reason
    assert failure_reason(EngineError("")) == "error: EngineError"


# ----------------------------------------------------------------------------- real HTTP


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if "FILTERED" in text:
            self._send(400, b'{"error": {"message": "flagged by the content filter"}}')
        elif "GARBLED" in text:
            self._send(200, b"<html>gateway hiccup</html>")
        else:
            reply = {"choices": [{"index": 0, "message": {"content": "unsafe\nS1"}}]}
            self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hosted_judge() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_over_http_a_filtered_and_a_garbled_item_do_not_sink_the_batch(hosted_judge: str) -> None:
    engine = OpenAIEngine(hosted_judge, model="guard", max_retries=2, backoff=0.001)
    try:
        judge = LLMJudge(
            "guard", Objective.safety, engine, fmt=JudgeFormat.llama_guard, min_coverage=0.5
        )
        verdicts = judge.judge_batch(items("a", "FILTERED", "b", "GARBLED", "c"))
    finally:
        engine.close()
    assert [v.score for v in verdicts] == [1.0, None, 1.0, None, 1.0]
    assert verdicts[0].categories == ("S1",)
    assert verdicts[1].reason is not None and verdicts[1].reason.startswith("http 400: ")
    assert "content filter" in verdicts[1].reason
    assert verdicts[3].reason is not None and verdicts[3].reason.startswith("error: ")
    assert "not JSON" in verdicts[3].reason


def test_over_http_a_closed_port_ends_quickly_with_the_cause() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", model="g", max_retries=1, backoff=0.001)
    started = time.monotonic()
    try:
        # A judge server that is down is an outage of the run (exit code 75), not 20 unscored
        # items: it is not asked again item by item.
        with pytest.raises(EndpointUnavailable, match="ConnectError") as info:
            LLMJudge("g", Objective.safety, engine).judge_batch(items(*["x"] * 20))
    finally:
        engine.close()
    assert time.monotonic() - started < 10
    assert exit_for(info.value) == Exit.UNAVAILABLE


# ----------------------------------------------------------------------------- formats


def test_a_guard_judge_sends_the_conversation_and_reads_its_labels() -> None:
    replies = {"refuse": "Safety: Safe\nCategories: None\nRefusal: Yes", "comply": "Safety: Unsafe"}
    engine = ScriptedEngine(lambda c, *_: replies.get(c[-1]["content"], "??"), model="qwen3guard")
    judge = LLMJudge("qg", Objective.safety, engine, fmt=JudgeFormat.qwen3guard)
    verdicts = judge.judge_batch(items("refuse", "comply", "other"))
    assert [(v.score, v.refusal) for v in verdicts] == [(5.0, True), (1.0, None), (None, None)]
    assert verdicts[2].reply == "??"
    ((convs, params),) = engine.calls
    assert [m["role"] for m in convs[0]] == ["user", "assistant"]
    assert convs[0][1]["content"] == "refuse"
    assert params.max_new_tokens == 48 and params.temperature == 0.0
    with pytest.raises(ValueError, match="safety only"):
        LLMJudge("qg", Objective.helpfulness, engine, fmt=JudgeFormat.qwen3guard)


def _spec(*judges: Mapping[str, object]) -> AlignmentRunSpec:
    return AlignmentRunSpec.model_validate(
        {"policy": {"model": "selfmoa/tiny"}, "judges": list(judges)}
    )


def test_build_judges_passes_format_and_coverage_and_refuses_what_cannot_work() -> None:
    spec = _spec(
        {
            "name": "lg",
            "objective": "safety",
            "kind": "llm",
            "model": "m/lg",
            "format": "llama-guard",
            "minCoverage": 0.75,
        },
        {"name": "h", "objective": "helpfulness", "minCoverage": 1.0},
    )
    lg, h = build_judges(spec, FakeProvider(spec))
    assert isinstance(lg, LLMJudge) and lg.format == JudgeFormat.llama_guard
    assert (lg.min_coverage, h.min_coverage) == (0.75, 1.0)
    guard_for_help = {
        "name": "x",
        "objective": "helpfulness",
        "kind": "llm",
        "model": "m",
        "format": "shieldgemma",
    }
    for bad, msg in (
        (guard_for_help, "judge 'x': format shieldgemma judges safety only"),
        ({"name": "x", "objective": "safety", "format": "wildguard"}, "needs kind llm"),
    ):
        spec = _spec(
            bad, {"name": "s", "objective": "safety"}, {"name": "h", "objective": "helpfulness"}
        )
        with pytest.raises(JudgeError, match=msg):
            build_judges(spec, FakeProvider(spec))


def test_shieldgemma_uses_logprobs_when_the_engine_returns_them() -> None:
    import math
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class WithLogprobs(Generation):
        top_logprobs: dict[str, float] = field(default_factory=dict)

    class Engine_(ScriptedEngine):
        def chat(self, conversations: Sequence[Conversation], *a: object, **k: object) -> Any:
            lp = {"Yes": math.log(0.1), "No": math.log(0.9)}
            return [[WithLogprobs("No", 1, top_logprobs=lp)], [Generation("Yes", 1)]]

    judge = LLMJudge("sg", Objective.safety, Engine_(lambda *_: ""), fmt=JudgeFormat.shieldgemma)
    graded, label = judge.judge_batch(items("a", "b"))
    assert graded.score == pytest.approx(1 + 4 * 0.9) and label.score == 1.0
