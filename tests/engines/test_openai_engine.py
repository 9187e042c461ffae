"""OpenAIEngine against our OpenAI-compatible server on 127.0.0.1 (real HTTP, injected faults)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fakes import EchoEngine, LogprobEngine
from selfmoa.api.exits import Exit, exit_for
from selfmoa.engines.base import (
    Conversation,
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    user,
)
from selfmoa.engines.http import EndpointUnavailable
from selfmoa.engines.openai_engine import OpenAIEngine, normalize_base_url
from selfmoa.engines.server import FaultPlan, OpenAIServer

FAST = {"backoff": 0.001, "max_retries": 3}


@pytest.fixture
def echo() -> EchoEngine:
    return EchoEngine()


def serve(engine: Engine, faults: FaultPlan | None = None, **kw: object) -> OpenAIServer:
    return OpenAIServer(engine, faults=faults, **kw)  # type: ignore[arg-type]


@pytest.fixture
def server(echo: EchoEngine) -> Iterator[OpenAIServer]:
    with serve(echo) as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_base_url_forms() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert normalize_base_url(url) == "http://h:1"


def test_round_trip_with_n(server: OpenAIServer, echo: EchoEngine) -> None:
    params = SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9, n=3, seed=10, stop=("x",))
    with OpenAIEngine(server.url + "/v1", model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
        out = engine.chat([user("hi"), user("yo", system="sys")], params)
    assert [[g.text for g in gens] for gens in out] == [
        ["base: hi #10", "base: hi #11", "base: hi #12"],
        ["base: yo #10", "base: yo #11", "base: yo #12"],
    ]
    # usage.completion_tokens (9 per reply) is split evenly over the 3 choices.
    assert all(g.tokens == 3 for gens in out for g in gens)
    # One request per conversation: `n` went to the server, so did every sampling parameter.
    assert server.stats.requests == 2
    assert {p for _, p, _ in echo.calls} == {params}


def test_order_preserved_under_concurrency() -> None:
    echo = EchoEngine(delay=0.01)
    done: list[int] = []
    with (
        serve(echo, max_batch=16) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            max_concurrency=16,
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        convs = [user(f"q{i}") for i in range(80)]
        out = engine.chat(convs, SamplingParams(n=2), progress=done.append)
    assert [gens[0].text for gens in out] == [f"base: q{i} #0" for i in range(80)]
    assert [gens[1].text for gens in out] == [f"base: q{i} #1" for i in range(80)]
    assert done == list(range(1, 81))
    # Concurrency reached the server: requests were batched together.
    assert max(n for n, _, _ in echo.calls) > 1
    assert len(echo.calls) < 80


def test_concurrency_limit_is_engine_wide() -> None:
    # Two threads share one engine with max_concurrency 4: the server never sees more than 4
    # requests at once, so no batch can exceed 4 even with a long batching window.
    echo = EchoEngine(delay=0.02)
    with (
        serve(echo, max_batch=64, max_wait_ms=30) as server,
        OpenAIEngine(server.url, model="echo/base", max_concurrency=4, **FAST) as engine,  # type: ignore[arg-type]
    ):
        convs = [user(f"q{i}") for i in range(16)]
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda _: engine.chat(convs, SamplingParams()), range(2)))
    assert all([g[0].text for g in out] == [f"base: q{i} #0" for i in range(16)] for out in outs)
    assert max(server.stats.batch_sizes) == 4


def adapter_dir(path: Path) -> Path:
    """A directory the server takes for an adapter (it checks for adapter_config.json)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_adapters_by_model_name(server: OpenAIServer, echo: EchoEngine, tmp_path: Path) -> None:
    adapter_dir(tmp_path / "a1")
    with OpenAIEngine(server.url, model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
        engine.load_adapter("iter-1", str(tmp_path / "a1"))
        engine.load_adapter("iter-1", str(tmp_path / "a1"))  # already loaded: fine
        assert engine.models() == ["echo/base", "iter-1"]
        out = engine.chat([user("hi")], SamplingParams(), adapter="iter-1")
        assert out[0][0].text == f"{tmp_path / 'a1'}: hi #0"
        assert echo.calls[-1][2] == str(tmp_path / "a1")
        assert engine.chat([user("hi")], SamplingParams())[0][0].text == "base: hi #0"
        engine.unload_adapter("iter-1")
        engine.unload_adapter("iter-1")  # not loaded: fine
        before = server.stats.requests
        with pytest.raises(EngineError, match="HTTP 404"):
            engine.chat([user("hi")], SamplingParams(), adapter="iter-1")
        assert server.stats.requests == before + 1  # a 404 is not retried


def test_retries_after_500s(echo: EchoEngine) -> None:
    with (
        serve(echo, FaultPlan(first=["error", "error"])) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        assert engine.chat([user("a")], SamplingParams())[0][0].text == "base: a #0"
        assert server.stats.requests == 3


def test_429_then_success(echo: EchoEngine) -> None:
    with (
        serve(echo, FaultPlan(first=["rate_limit"])) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        assert engine.chat([user("a")], SamplingParams())[0][0].text == "base: a #0"
        assert server.stats.requests == 2


def test_500s_exhaust_retries(echo: EchoEngine) -> None:
    with (
        serve(echo, FaultPlan(then="error")) as server,
        OpenAIEngine(server.url, model="echo/base", max_retries=2, backoff=0.001) as engine,
    ):
        url = server.url
        with pytest.raises(EngineError) as err:
            engine.chat([user("a")], SamplingParams())
        assert server.stats.requests == 3
    msg = str(err.value)
    assert "\n" not in msg
    assert f"POST {url}/v1/chat/completions failed after 3 attempts: HTTP 500" in msg
    assert "injected server error" in msg


def test_timeout_raises_after_retries(echo: EchoEngine) -> None:
    with serve(echo, FaultPlan(then="slow", sleep_s=5)) as server:
        engine = OpenAIEngine(
            server.url, model="echo/base", timeout=0.1, max_retries=2, backoff=0.001
        )
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable, match=r"after 3 attempts: timed out after 0.1s"):
            engine.chat([user("a")], SamplingParams())
        assert time.monotonic() - t0 < 2.0
        assert server.stats.requests == 3
        engine.close()


def test_a_frozen_server_ends_within_the_bound_then_fails_at_once(echo: EchoEngine) -> None:
    # The bound of one request on a server that stopped answering: every attempt's timeout and
    # every back-off, counted by `worst_case_seconds`. After it, the client doesn't wait again.
    with serve(echo, FaultPlan(then="slow", sleep_s=5)) as server:
        engine = OpenAIEngine(server.url, model="echo/base", timeout=1.0, max_retries=1)
        bound = engine.http.worst_case_seconds()
        assert bound == 2 * 1.0 + 30.0
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable) as info:
            engine.chat([user("a")], SamplingParams())
        first = time.monotonic() - t0
        assert 2.0 <= first <= bound
        assert exit_for(info.value) == Exit.UNAVAILABLE
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable, match="not tried, the server is down"):
            engine.chat([user("b")], SamplingParams())
        assert time.monotonic() - t0 < 0.5
        assert server.stats.requests == 2
        engine.close()


def test_a_bad_request_is_not_an_outage(echo: EchoEngine) -> None:
    with serve(echo, FaultPlan(then="garbage")) as server:
        engine = OpenAIEngine(server.url, model="echo/base", max_retries=0)
        with pytest.raises(EngineError) as info:
            engine.chat([user("a")], SamplingParams())
        assert not isinstance(info.value, EndpointUnavailable)
        assert exit_for(info.value) == Exit.FAILED
        engine.close()


@pytest.mark.parametrize(
    ("fault", "message"),
    [("garbage", "not JSON"), ("no_choices", "lacks choices")],
)
def test_malformed_replies_are_failed_attempts(echo: EchoEngine, fault: str, message: str) -> None:
    plan = FaultPlan(then=fault)  # type: ignore[arg-type]
    with (
        serve(echo, plan) as server,
        OpenAIEngine(server.url, model="echo/base", max_retries=1, backoff=0.001) as engine,
    ):
        with pytest.raises(EngineError, match=message):
            engine.chat([user("a")], SamplingParams())
        assert server.stats.requests == 2


def test_malformed_reply_then_success(echo: EchoEngine) -> None:
    with (
        serve(echo, FaultPlan(first=["garbage", "no_choices"])) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        assert engine.chat([user("a")], SamplingParams())[0][0].text == "base: a #0"
        assert server.stats.requests == 3


def test_connection_refused_fails_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    engine = OpenAIEngine(url, model="m", max_retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        engine.chat([user("a")], SamplingParams())
    assert time.monotonic() - t0 < 2.0
    assert f"POST {url}/v1/chat/completions failed after 3 attempts: ConnectError" in str(err.value)
    engine.close()


def test_400_fails_without_retries(echo: EchoEngine) -> None:
    with (
        serve(echo, FaultPlan(then="bad_request")) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        with pytest.raises(EngineError, match=r"HTTP 400: .*injected bad request"):
            engine.chat([user("a")], SamplingParams())
        assert server.stats.requests == 1


def test_n_falls_back_to_separate_requests(echo: EchoEngine) -> None:
    # The first request (n=3) is refused with a 400; the engine then sends 3 requests with n=1
    # and distinct seeds, and remembers that the server doesn't do `n`.
    with (
        serve(echo, FaultPlan(first=["bad_request"])) as server,
        OpenAIEngine(
            server.url,
            model="echo/base",
            **FAST,  # type: ignore[arg-type]
        ) as engine,
    ):
        out = engine.chat([user("a")], SamplingParams(n=3, seed=4))
        assert [g.text for g in out[0]] == ["base: a #4", "base: a #5", "base: a #6"]
        assert server.stats.requests == 4
        assert not engine.supports_n
        out = engine.chat([user("b")], SamplingParams(n=2, seed=0))
        assert [g.text for g in out[0]] == ["base: b #0", "base: b #1"]
        assert server.stats.requests == 6


def test_chat_from_a_running_event_loop(server: OpenAIServer) -> None:
    async def inside() -> list[list[Generation]]:
        # A synchronous call from a coroutine: the engine's own loop thread does the work.
        with OpenAIEngine(server.url, model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
            return engine.chat([user("in loop")], SamplingParams())

    assert asyncio.run(inside())[0][0].text == "base: in loop #0"


def test_api_key_is_sent(echo: EchoEngine) -> None:
    # Our server ignores auth; check the header reaches it through a tiny handler hook.
    seen: list[str | None] = []
    from selfmoa.engines import server as server_mod

    class Recording(server_mod._Handler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization"))
            super().do_POST()

    with serve(echo) as s:
        assert s._httpd is not None
        s._httpd.RequestHandlerClass = Recording
        with OpenAIEngine(s.url, model="echo/base", api_key="sekret") as engine:
            engine.chat([user("a")], SamplingParams())
    assert seen == ["Bearer sekret"]


def test_empty_batch_makes_no_request(server: OpenAIServer) -> None:
    with OpenAIEngine(server.url, model="echo/base") as engine:
        assert engine.chat([], SamplingParams()) == []
    assert server.stats.requests == 0


@pytest.mark.slow
def test_tiny_model_through_the_server(tmp_path_factory: pytest.TempPathFactory) -> None:
    from selfmoa.engines.transformers_engine import TransformersEngine
    from selfmoa.tiny import ensure_base

    # The session's shared tiny build (same path as tests/tiny/conftest.py): building it trains
    # a model for minutes on 2 cores, so it happens once per session.
    path = ensure_base(tmp_path_factory.getbasetemp() / "selfmoa-cache")
    local = TransformersEngine(path, model="selfmoa/tiny", batch_size=8)
    convs = [user("How do I bake bread?"), user("Tell me a joke."), user("What is 2+2?")]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    # Concurrency 1: each request is its own batch, like the direct single-conversation calls.
    with (
        serve(local, model_name="selfmoa/tiny") as server,
        OpenAIEngine(
            server.url,
            model="selfmoa/tiny",
            max_concurrency=1,
            **FAST,  # type: ignore[arg-type]
        ) as remote,
    ):
        served = remote.chat(convs, params)
    direct = [local.chat([c], params)[0] for c in convs]
    assert [[g.text for g in gens] for gens in served] == [
        [g.text for g in gens] for gens in direct
    ]
    assert all(g.tokens > 0 for gens in served for g in gens)
    local.close()


# ---------------------------------------------------------------- adapters: reply shapes, use_adapter

ALREADY = "The lora adapter 'a' has already been loaded."


def scripted_adapter_replies(
    replies: list[tuple[int, str, str]],
) -> tuple[OpenAIServer, list[dict[str, object]]]:
    """Our server, but `/v1/load_lora_adapter` answers (status, content type, body) in turn."""
    import json

    from selfmoa.engines import server as server_mod

    bodies: list[dict[str, object]] = []

    class Scripted(server_mod._Handler):
        def do_POST(self) -> None:
            if self.path != "/v1/load_lora_adapter":
                super().do_POST()
                return
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, ctype, body = replies[min(len(bodies), len(replies)) - 1]
            self._send(status, body.encode(), ctype)

    s = serve(EchoEngine())
    s.start()
    assert s._httpd is not None
    s._httpd.RequestHandlerClass = Scripted
    return s, bodies


@pytest.mark.parametrize(
    "reply",
    [
        # vLLM before the JSON replies: plain text both ways.
        (200, "text/plain", "Success: LoRA adapter 'a' added successfully."),
        (400, "text/plain", ALREADY),
        # Newer vLLM: JSON, errors as {"object": "error", ...} or {"error": {...}}.
        (200, "application/json", '{"status": "success", "message": "added"}'),
        (200, "application/json", "\"Success: LoRA adapter 'a' added successfully.\""),
        (400, "application/json", f'{{"object": "error", "message": "{ALREADY}", "code": 400}}'),
        (400, "application/json", f'{{"error": {{"message": "{ALREADY}", "code": 400}}}}'),
    ],
)
def test_load_adapter_accepts_plain_and_json_replies(reply: tuple[int, str, str]) -> None:
    s, bodies = scripted_adapter_replies([reply])
    try:
        with OpenAIEngine(s.url, model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
            engine.load_adapter("a", "/adapters/a")
    finally:
        s.stop()
    assert bodies == [{"lora_name": "a", "lora_path": "/adapters/a"}]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((400, "text/plain", "Invalid LoRA path /adapters/a"), "HTTP 400: Invalid LoRA path"),
        (
            (400, "application/json", '{"error": {"message": "max_loras reached", "code": 400}}'),
            "max_loras reached",
        ),
        # An error object with a 200 status is still an error.
        (
            (200, "application/json", '{"object": "error", "message": "no such path"}'),
            "no such path",
        ),
        ((404, "text/plain", "Not Found"), "HTTP 404"),
    ],
)
def test_load_adapter_failures_are_one_line(reply: tuple[int, str, str], message: str) -> None:
    s, bodies = scripted_adapter_replies([reply])
    try:
        with (
            OpenAIEngine(s.url, model="echo/base", **FAST) as engine,  # type: ignore[arg-type]
            pytest.raises(EngineError, match=message) as err,
        ):
            engine.load_adapter("a", "/adapters/a")
    finally:
        s.stop()
    assert "\n" not in str(err.value)
    assert len(bodies) == 1  # a refused load is not retried


def test_load_adapter_retries_a_5xx_then_takes_already_loaded() -> None:
    s, bodies = scripted_adapter_replies(
        [(503, "text/plain", "busy"), (400, "application/json", f'{{"message": "{ALREADY}"}}')]
    )
    try:
        with OpenAIEngine(s.url, model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
            engine.load_adapter("a", "/adapters/a")
    finally:
        s.stop()
    assert len(bodies) == 2


class _RemoteStore:
    """A store with no path on this machine (what an s3:// store looks like to an engine)."""

    uri = "s3://bucket/ns/run"

    def local_path(self, key: str) -> Path | None:
        return None


def test_use_adapter_hot_loads_under_a_stable_name(
    server: OpenAIServer, echo: EchoEngine, tmp_path: Path
) -> None:
    import hashlib

    from selfmoa.engines.base import AdapterSource
    from selfmoa.store import open_store

    store = open_store(f"file://{tmp_path}/store")
    stored = adapter_dir(tmp_path / "store" / "iter-001" / "train" / "adapter")
    on_disk = AdapterSource.of(store, "iter-001/train/adapter", given=None, scratch=tmp_path)
    start = adapter_dir(tmp_path / "start-adapter")
    given = AdapterSource.of(store, None, given=str(start), scratch=tmp_path)
    with OpenAIEngine(server.url, model="echo/base", **FAST) as engine:  # type: ignore[arg-type]
        assert engine.use_adapter(None) is None
        assert server.stats.requests == 0
        name = engine.use_adapter(on_disk)
        assert name == "selfmoa-" + hashlib.sha256(str(stored).encode()).hexdigest()[:10]
        assert engine.use_adapter(on_disk) == name  # a retried stage: same name, no error
        given_name = engine.use_adapter(given)
        out = engine.chat([user("hi")], SamplingParams(), adapter=name)
    assert server.adapters == {name: str(stored), given_name: str(start)}
    assert out[0][0].text == f"{stored}: hi #0"


def test_use_adapter_hands_a_remote_store_uri_to_the_server(server: OpenAIServer) -> None:
    # Today's behaviour until the adapter agent lands: the server is handed the store URI, which
    # vLLM (and our server, which mirrors it) refuses without an S3 LoRA resolver: one line.
    from selfmoa.engines.base import AdapterSource

    remote = AdapterSource(key="iter-002/train/adapter", store=_RemoteStore())  # type: ignore[arg-type]
    with (
        OpenAIEngine(server.url, model="echo/base", **FAST) as engine,  # type: ignore[arg-type]
        pytest.raises(EngineError, match="No adapter found for s3://bucket/ns/run/iter-002") as e,
    ):
        engine.use_adapter(remote)
    assert "\n" not in str(e.value)


def test_use_adapter_asks_the_locator(server: OpenAIServer, tmp_path: Path) -> None:
    # The adapter agent's seam: whoever fetches the adapter next to the server says its path.
    from selfmoa.engines.base import AdapterSource

    seen: list[AdapterSource] = []
    fetched = adapter_dir(tmp_path / "shared" / "iter-001")

    def agent(source: AdapterSource) -> str:
        seen.append(source)
        return str(fetched)

    source = AdapterSource(key="iter-001/train/adapter", store=_RemoteStore())  # type: ignore[arg-type]
    with OpenAIEngine(
        server.url,
        model="echo/base",
        adapter_locator=agent,
        **FAST,  # type: ignore[arg-type]
    ) as engine:
        name = engine.use_adapter(source)
    assert seen == [source]
    assert name is not None and server.adapters == {name: str(fetched)}


def yes_likelier_when_asked_yes(conversation: Conversation) -> dict[str, float]:
    yes = -0.1 if "yes" in conversation[-1]["content"] else -2.5
    return {" Yes": yes, " No": -1.0, "The": -4.0}


def test_first_token_logprobs_over_http_as_vllm_gives_them() -> None:
    with (
        serve(LogprobEngine(yes_likelier_when_asked_yes)) as s,
        OpenAIEngine(s.url, model="echo/base", **FAST) as engine,
    ):
        rows = engine.first_token_logprobs([user("say yes"), user("say no")], top=3)
    assert rows == [
        {" Yes": -0.1, " No": -1.0, "The": -4.0},
        {" Yes": -2.5, " No": -1.0, "The": -4.0},
    ]


def test_a_begun_answer_is_continued_over_http(server: OpenAIServer) -> None:
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "I can't"}]
    with OpenAIEngine(server.url, model="echo/base", **FAST) as engine:
        (gens,) = engine.chat([conv], SamplingParams(max_new_tokens=4))
    # The server was asked to continue the final message (vLLM's continue_final_message).
    assert gens[0].text == "base: I can't #0"
