"""The whole loop with the policy served over HTTP and the artifacts in S3: every iteration's
adapter reaches both serving replicas through their adapter agents.

Two `selfmoa serve`-style servers (our OpenAIServer, which refuses `s3://` adapter paths exactly
like vLLM) sit behind a round-robin proxy (a Service), each with an `AdapterAgent` beside it;
the store is a bucket on moto's S3 server. The policy is a random tiny Qwen2 (built in a second)
standing in for `selfmoa/tiny`, so the loop's numbers mean nothing: what is checked is delivery.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import trainutil
from selfmoa.api import Phase, parse_run
from selfmoa.engines.agent import protocol
from selfmoa.engines.agent.agent import AdapterAgent
from selfmoa.engines.agent.client import wanted_of
from selfmoa.engines.server import OpenAIServer
from selfmoa.local.executor import run_local
from selfmoa.run import layout
from selfmoa.store.s3 import S3Store

pytestmark = pytest.mark.slow

TINY = "selfmoa/tiny"


class RoundRobin(ThreadingHTTPServer):
    """A Service in front of the replicas: each request to the next backend in turn."""

    daemon_threads = True

    def __init__(self, backends: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.backends = backends
        self.client = httpx.Client(timeout=60)
        self.lock = threading.Lock()
        self.turn = 0
        #: (backend index, requested model) of every chat request.
        self.chats: Counter[tuple[int, str]] = Counter()

    def pick(self) -> int:
        with self.lock:
            self.turn += 1
            return self.turn % len(self.backends)


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RoundRobin

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        i = self.server.pick()
        if self.path.endswith("/chat/completions"):
            with self.server.lock:
                self.server.chats[(i, str(json.loads(body).get("model")))] += 1
        resp = self.server.client.request(
            method,
            self.server.backends[i] + self.path,
            content=body or None,
            headers={"Content-Type": "application/json"},
        )
        self.send_response(resp.status_code)
        self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def s3(s3_bucket: str, moto_endpoint: str) -> tuple[str, str]:
    """(bucket, endpoint): a fresh bucket on tests/conftest.py's moto server."""
    return s3_bucket, moto_endpoint


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`selfmoa.tiny.ensure_base` gives a random tiny model (the real build takes minutes)."""
    import selfmoa.tiny

    base: Path = trainutil().build_tiny_model(tmp_path / "tiny")
    monkeypatch.setattr(selfmoa.tiny, "ensure_base", lambda *_, **__: base)
    return base


def test_every_iteration_is_served_through_the_agents_of_both_replicas(
    s3: tuple[str, str], tiny: Path, tmp_path: Path
) -> None:
    from selfmoa.engines.transformers_engine import TransformersEngine

    bucket, endpoint = s3
    servers = [OpenAIServer(TransformersEngine(tiny, model=TINY)) for _ in range(2)]
    urls = [s.start() for s in servers]
    proxy = RoundRobin(urls)
    threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True).start()
    run_uri = f"s3://{bucket}/runs/default/served"
    stop = threading.Event()
    said: list[str] = []
    agents = [
        AdapterAgent(
            S3Store(run_uri, endpoint=endpoint),
            server=url,
            directory=tmp_path / f"adapters-{i}",
            replica=f"policy-{i}",
            model=TINY,
            interval=0.2,
            say=said.append,
        )
        for i, url in enumerate(urls)
    ]
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    host, port = proxy.server_address[:2]
    run = parse_run(
        {
            "metadata": {"name": "served"},
            "spec": {
                "policy": {"model": TINY},
                "redTeam": {"promptsPerIteration": 8},
                "sampling": {"responsesPerPrompt": 2, "temperature": 1.0, "maxNewTokens": 12},
                "judges": [
                    {"name": "refusal-a", "objective": "safety", "noise": 0.1, "seed": 1},
                    {"name": "helpful-a", "objective": "helpfulness", "noise": 0.1, "seed": 2},
                ],
                "training": {
                    "learningRate": 0.005,
                    "batchSize": 4,
                    "maxLength": 64,
                    "lora": {"r": 4, "alpha": 8},
                },
                "iterations": 2,
                "evaluation": {"goldJudge": True, "maxPrompts": 8, "maxNewTokens": 12},
                "serving": {
                    "engine": "openai",
                    "endpoints": {TINY: f"http://{host!s}:{port}"},
                    "replicas": 2,
                },
                "storage": {"uri": f"s3://{bucket}/runs", "endpoint": endpoint},
            },
        }
    )
    started = time.monotonic()
    try:
        result = run_local(run)
        seconds = time.monotonic() - started
        adapters = [s.adapters for s in servers]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        proxy.shutdown()
        proxy.client.close()
        for s in servers:
            s.stop()
    print(f"\n2 iterations, policy on 2 replicas behind a round-robin Service: {seconds:.1f} s")
    assert result.status.phase == Phase.succeeded, result.status.message
    assert sorted(result.metrics) == [0, 1, 2]
    store = S3Store(run_uri, endpoint=endpoint)
    names = {}
    for k in (1, 2):
        key = layout.stage_file(k, "train", layout.ADAPTER)
        assert result.metrics[k].adapter == key
        names[k] = wanted_of(store, key, 0).name
    # Every iteration's adapter was loaded on both replicas, from each agent's own verified copy
    # (the three kept ones are all still there: nothing was pushed out in two iterations).
    for i, loaded in enumerate(adapters):
        for k, name in names.items():
            assert loaded.get(name) == str(tmp_path / f"adapters-{i}" / name), (i, k, said)
    # Generation with each adapter went to both replicas, and every one answered (a replica
    # without the adapter would have answered 404 and failed the stage).
    for name in names.values():
        assert proxy.chats[(0, name)] > 0 and proxy.chats[(1, name)] > 0, proxy.chats
    # The agents withdrew their reports when they stopped; while running they said what they did.
    assert protocol.read_reports(store, TINY)[0] == []
    assert sum("loaded" in line for line in said) >= 4, said
