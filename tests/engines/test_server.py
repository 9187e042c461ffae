"""The OpenAI-compatible server: real HTTP on 127.0.0.1 against a fake engine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import EchoEngine
from selfmoa.engines.base import SamplingParams
from selfmoa.engines.server import FaultPlan, OpenAIServer


def fake_engine(**kw: Any) -> EchoEngine:
    """The echo engine, as this suite names it: `fake/base`, replies `base:<message>#<seed>`."""
    return EchoEngine(model="fake/base", reply="{adapter}:{text}#{seed}", **kw)


@pytest.fixture
def engine() -> EchoEngine:
    return fake_engine()


@pytest.fixture
def server(engine: EchoEngine) -> Iterator[OpenAIServer]:
    with OpenAIServer(engine) as s:
        yield s


#: One client for the module: creating an httpx client costs ~75 ms (its SSL context).
_client = httpx.Client(timeout=10)


def chat(url: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "fake/base", "messages": [{"role": "user", "content": text}], **extra}
    return _client.post(url + "/v1/chat/completions", json=body)


def test_health_and_models(server: OpenAIServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    r = _client.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    ids = [m["id"] for m in _client.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["fake/base"]
    assert _client.get(server.url + "/nope").status_code == 404


def test_chat_round_trip(server: OpenAIServer, engine: EchoEngine) -> None:
    r = chat(server.url, "hello", n=3, seed=7, temperature=0.5, max_tokens=9, stop=["\n"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert [c["message"]["content"] for c in body["choices"]] == [
        "base:hello#7",
        "base:hello#8",
        "base:hello#9",
    ]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 2 + 3 + 4
    (_, params, adapter), *_ = engine.calls
    assert params == SamplingParams(
        max_new_tokens=9, temperature=0.5, top_p=1.0, n=3, seed=7, stop=("\n",)
    )
    assert adapter is None


def test_completions_list_prompt(server: OpenAIServer) -> None:
    r = _client.post(
        server.url + "/v1/completions", json={"prompt": ["a", "b"], "n": 2, "seed": 0}, timeout=10
    )
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [(c["index"], c["text"]) for c in choices] == [
        (0, "base:a#0"),
        (1, "base:a#1"),
        (2, "base:b#0"),
        (3, "base:b#1"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}], "n": 0},
        {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
        # A final assistant message is continued only as vLLM does, when asked to.
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "I"}]},
        {
            "messages": [{"role": "user", "content": "x"}],
            "continue_final_message": True,
            "add_generation_prompt": False,
        },
    ],
)
def test_bad_requests_are_400(server: OpenAIServer, body: dict[str, Any]) -> None:
    r = _client.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400


def test_a_final_assistant_message_is_continued_when_asked(
    server: OpenAIServer, engine: EchoEngine
) -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "I can't"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    r = _client.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text


def test_non_json_body_is_400(server: OpenAIServer) -> None:
    r = _client.post(server.url + "/v1/chat/completions", content=b"{nope", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]


def _adapter_dir(path: Path) -> Path:
    """A directory vLLM would take for an adapter (the fake engine never reads the weights)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    return path


def _load(url: str, name: Any, path: Any) -> httpx.Response:
    return _client.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})


def _unload(url: str, name: Any) -> httpx.Response:
    return _client.post(url + "/v1/unload_lora_adapter", json={"lora_name": name})


def test_adapters_route_by_model_name(
    server: OpenAIServer, engine: EchoEngine, tmp_path: Path
) -> None:
    path = str(_adapter_dir(tmp_path / "iter1"))
    first = _load(server.url, "iter1", path)
    assert first.status_code == 200
    assert first.text == "Success: LoRA adapter 'iter1' added successfully."
    ids = [m["id"] for m in _client.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["fake/base", "iter1"]

    r = chat(server.url, "hi", model="iter1")
    assert r.json()["choices"][0]["message"]["content"] == f"{path}:hi#0"
    assert engine.calls[-1][2] == path
    assert chat(server.url, "hi", model="missing").status_code == 404

    assert _unload(server.url, "iter1").status_code == 200
    assert _unload(server.url, "iter1").status_code == 404
    assert chat(server.url, "hi", model="iter1").status_code == 404


def test_loading_a_loaded_name_again_is_vllms_400_and_changes_nothing(
    server: OpenAIServer, tmp_path: Path
) -> None:
    path = str(_adapter_dir(tmp_path / "a"))
    assert _load(server.url, "a", path).status_code == 200
    # vLLM checks the name before the path: a second load is refused whatever it points at,
    # and the adapter already loaded keeps serving (clients treat "already" as success).
    for again_path in (path, str(tmp_path / "elsewhere"), "s3://bucket/a"):
        again = _load(server.url, "a", again_path)
        assert again.status_code == 400
        assert again.json() == {
            "error": {
                "message": "The lora adapter 'a' has already been loaded.",
                "type": "InvalidUserInput",
                "param": None,
                "code": 400,
            }
        }
    assert server.adapters == {"a": path}


@pytest.mark.parametrize(
    "lora_path",
    [
        "s3://bucket/ns/run/iter-001/train/adapter",
        "file:///adapters/iter1",
        "/no/such/adapter",
        "not-here/either",
    ],
)
def test_adapters_vllm_cannot_read_are_refused_like_vllm(
    server: OpenAIServer, lora_path: str
) -> None:
    r = _load(server.url, "iter1", lora_path)
    # vLLM v0.10 (the pinned image): the LoRA worker finds no adapter_config.json there and
    # the route maps "No adapter found" to 404 NotFoundError.
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": f"Loading lora iter1 failed: No adapter found for {lora_path}",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    assert server.adapters == {}
    assert chat(server.url, "hi", model="iter1").status_code == 404


def test_a_directory_without_an_adapter_config_is_refused(
    server: OpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    assert _load(server.url, "x", str(tmp_path / "empty")).status_code == 404
    assert _load(server.url, "x", str(_adapter_dir(tmp_path / "ok"))).status_code == 200


def test_relative_and_home_paths_resolve_like_vllm(
    server: OpenAIServer, engine: EchoEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _adapter_dir(tmp_path / "rel" / "iter2")
    _adapter_dir(tmp_path / "home" / "iter3")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _load(server.url, "two", "rel/iter2").status_code == 200
    assert _load(server.url, "three", "~/iter3").status_code == 200
    # The engine gets absolute directories (independent of the server's working directory).
    assert server.adapters == {
        "two": str(tmp_path / "rel" / "iter2"),
        "three": str(tmp_path / "home" / "iter3"),
    }
    chat(server.url, "hi", model="two")
    assert engine.calls[-1][2] == str(tmp_path / "rel" / "iter2")


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("load", {"lora_name": "a"}, "Both 'lora_name' and 'lora_path' must be provided."),
        ("load", {"lora_name": "", "lora_path": "/x"}, "Both 'lora_name' and"),
        ("load", {"lora_name": "a", "lora_path": 3}, "Both 'lora_name' and"),
        ("unload", {}, "'lora_name' needs to be provided to unload a LoRA adapter."),
    ],
)
def test_adapter_requests_missing_fields_are_400(
    server: OpenAIServer, route: str, body: dict[str, Any], message: str
) -> None:
    r = _client.post(f"{server.url}/v1/{route}_lora_adapter", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith(message) and error["type"] == "InvalidUserInput"


def test_unloading_an_unknown_name_is_vllms_404(server: OpenAIServer) -> None:
    r = _unload(server.url, "ghost")
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "The lora adapter 'ghost' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def test_micro_batching_batches_concurrent_requests() -> None:
    engine = fake_engine(delay=0.02)
    with OpenAIServer(engine, max_batch=8) as server, httpx.Client(timeout=10) as client:

        def one(i: int) -> str:
            body = {"messages": [{"role": "user", "content": f"q{i}"}], "temperature": 0}
            r = client.post(server.url + "/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])

        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(one, range(32)))
    assert texts == [f"base:q{i}#0" for i in range(32)]
    # 32 requests, 16 at a time, at most 8 per call: far fewer engine calls than requests.
    sizes = server.stats.batch_sizes
    assert sum(sizes) == 32
    assert max(sizes) <= 8
    assert server.stats.engine_calls <= 12, sizes
    assert max(sizes) >= 4, sizes


def test_batches_group_by_sampling_params() -> None:
    engine = fake_engine(delay=0.02)
    with OpenAIServer(engine, max_batch=32, max_wait_ms=50) as server:

        def one(i: int) -> str:
            r = chat(server.url, f"q{i}", seed=i % 2, temperature=0.7)
            return str(r.json()["choices"][0]["message"]["content"])

        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(one, range(8)))
    assert texts == [f"base:q{i}#{i % 2}" for i in range(8)]
    # Each engine call saw one set of parameters (else seeds would be wrong above); the two
    # seeds need at least two calls.
    assert {p.seed for _, p, _ in engine.calls} == {0, 1}
    assert server.stats.engine_calls >= 2


def test_engine_failure_is_500_and_server_survives() -> None:
    engine = fake_engine(fail=True)
    with OpenAIServer(engine) as server:
        r = chat(server.url, "x")
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
        engine.fail = False
        assert chat(server.url, "x").status_code == 200


def test_fault_plan_sequence(engine: EchoEngine) -> None:
    plan = FaultPlan(first=["error", "rate_limit", "garbage", "no_choices", None, "bad_request"])
    with OpenAIServer(engine, faults=plan) as server:
        got = [chat(server.url, "x") for _ in range(7)]
        assert [r.status_code for r in got] == [500, 429, 200, 200, 200, 400, 200]
        assert got[1].headers["retry-after"] == "0"
        with pytest.raises(ValueError):
            got[2].json()
        assert "choices" not in got[3].json()
        assert got[4].json()["choices"][0]["message"]["content"] == "base:x#0"
        assert server.stats.requests == 7
        # Health and models are never faulty.
        assert _client.get(server.url + "/health").status_code == 200


def test_stop_does_not_wait_for_slow_fault(engine: EchoEngine) -> None:
    server = OpenAIServer(engine, faults=FaultPlan(then="slow", sleep_s=30))
    url = server.start()
    with pytest.raises(httpx.TimeoutException):
        _client.post(
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            timeout=0.2,
        )
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5


def test_serve_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from selfmoa.engines.server import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--max-batch" in out.stdout and "--model" in out.stdout


def test_a_request_over_the_context_length_is_vllms_400(engine: EchoEngine) -> None:
    # vLLM refuses a prompt plus max_tokens above --max-model-len with HTTP 400 and these
    # words; the stand-in must too, or a stage asking for too much passes every test.
    with OpenAIServer(engine, max_model_len=20) as s:
        r = chat(s.url, "one two three four five six", max_tokens=15)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == (
            "This model's maximum context length is 20 tokens. However, you requested 21 tokens "
            "(6 in the messages, 15 in the completion). Please reduce the length of the messages "
            "or completion."
        )
        assert engine.calls == []  # refused before it reached the engine
        assert chat(s.url, "one two three four five six", max_tokens=14).status_code == 200
        # The client gives up at once: a request the server refuses is not an outage.
        from selfmoa.api.exits import Exit, exit_for
        from selfmoa.engines.base import EngineError
        from selfmoa.engines.openai_engine import OpenAIEngine

        client = OpenAIEngine(s.url, model="fake/base", max_retries=3)
        with pytest.raises(EngineError, match=r"HTTP 400: .*maximum context length is 20") as err:
            client.chat([[{"role": "user", "content": "a " * 19}]], SamplingParams())
        assert exit_for(err.value) == Exit.FAILED
        client.close()


def test_no_context_limit_when_the_engine_does_not_know_one(server: OpenAIServer) -> None:
    assert server.max_model_len is None
    assert chat(server.url, "word " * 5000, max_tokens=100000).status_code == 200
