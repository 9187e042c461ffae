"""Adapter delivery from an s3:// store to every serving replica, through the adapter agents.

Real pieces throughout: moto's S3 server on 127.0.0.1, our OpenAI-compatible server (which refuses
`s3://` paths the way vLLM does), `AdapterAgent`s in threads beside each server, and the client
side in `OpenAIEngine.use_adapter`. The fast tests serve an echo engine (its reply names the
adapter directory it was given); the slow one serves the tiny model with a real PEFT adapter.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fakes import EchoEngine, trainutil
from selfmoa.engines.agent import protocol
from selfmoa.engines.agent.agent import PARTIAL, VERIFIED, AdapterAgent
from selfmoa.engines.agent.client import AgentDelivery
from selfmoa.engines.base import (
    AdapterSource,
    Engine,
    EngineError,
    SamplingParams,
    user,
)
from selfmoa.engines.openai_engine import OpenAIEngine
from selfmoa.engines.server import OpenAIServer
from selfmoa.stages.base import StageOutput
from selfmoa.store import Store

MODEL = "echo/base"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def run_uri(s3_bucket: str) -> str:
    """A run root in a fresh bucket (tests/conftest.py's moto server)."""
    return f"s3://{s3_bucket}/runs/ns/run"


def open_s3(run_uri: str, endpoint: str) -> Store:
    from selfmoa.store.s3 import S3Store

    return S3Store(run_uri, endpoint=endpoint, timeout=20)


def echo_engine() -> EchoEngine:
    """Replies `<adapter directory or base>|<last message>`."""
    return EchoEngine(model=MODEL, reply="{adapter}|{text}")


def store_adapter(store: Store, k: int, files: dict[str, bytes] | None = None) -> str:
    """An adapter in iteration k's train stage, with the manifest a finished stage writes."""
    out = StageOutput(store, f"iter-{k:03d}/train")
    files = files or {
        "adapter_config.json": json.dumps({"r": 4, "k": k}).encode(),
        "adapter_model.safetensors": f"weights of iteration {k}".encode() * 50,
    }
    for name, data in files.items():
        out.write_bytes(f"adapter/{name}", data)
    store.write_json(f"iter-{k:03d}/train/_manifest.json", {"stage": "train", "files": out.files})
    return f"iter-{k:03d}/train/adapter"


@contextmanager
def replicas(
    n: int,
    run_uri: str,
    endpoint: str,
    tmp_path: Path,
    *,
    engine: Callable[[], Engine] = echo_engine,
    start_agents: bool = True,
) -> Iterator[Replicas]:
    """n servers, each with an agent (not yet started with `start_agents=False`)."""
    servers = [OpenAIServer(engine()) for _ in range(n)]
    for s in servers:
        s.start()
    said: list[str] = []
    agents = [
        AdapterAgent(
            open_s3(run_uri, endpoint),
            server=s.url,
            directory=tmp_path / f"adapters-{i}",
            replica=f"pod-{i}",
            model=servers[0].model_name,
            interval=0.1,
            say=said.append,
        )
        for i, s in enumerate(servers)
    ]
    r = Replicas(servers, agents, said)
    try:
        if start_agents:
            for i in range(n):
                r.start(i)
        yield r
    finally:
        r.stop()
        for s in servers:
            s.stop()


class Replicas:
    def __init__(
        self, servers: list[OpenAIServer], agents: list[AdapterAgent], said: list[str]
    ) -> None:
        self.servers, self.agents, self.said = servers, agents, said
        self.stops = [threading.Event() for _ in agents]
        self.threads: list[threading.Thread | None] = [None] * len(agents)

    def start(self, i: int) -> None:
        t = threading.Thread(target=self.agents[i].run, args=(self.stops[i],), daemon=True)
        t.start()
        self.threads[i] = t

    def stop(self) -> None:
        for e in self.stops:
            e.set()
        for t in self.threads:
            if t is not None:
                t.join(timeout=15)
                assert not t.is_alive(), "an agent did not stop"


def engine(url: str, delivery: AgentDelivery | None = None) -> OpenAIEngine:
    return OpenAIEngine(
        url, model=MODEL, max_retries=1, backoff=0.01, timeout=10, adapter_agents=delivery
    )


def use(client: Engine, source: AdapterSource) -> str:
    name = client.use_adapter(source)
    assert name is not None
    return name


def wait_until(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def echo(url: str, name: str) -> str:
    with engine(url) as e:
        return e.chat([user("hi")], SamplingParams(), adapter=name)[0][0].text


# ---------------------------------------------------------------- delivery to every replica


def test_use_adapter_returns_only_when_both_replicas_serve_it(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    key = store_adapter(store, 1)
    source = AdapterSource(key=key, store=store)
    with replicas(2, run_uri, moto_endpoint, tmp_path, start_agents=False) as r:
        a, b = r.servers
        r.start(0)
        delivery = AgentDelivery(replicas=2, timeout=60, poll=0.05, say=r.said.append)
        result: list[Any] = []
        client = threading.Thread(
            target=lambda: result.append(engine(a.url, delivery).use_adapter(source)), daemon=True
        )
        client.start()
        assert wait_until(lambda: len(a.adapters) == 1), r.said
        time.sleep(1.0)
        # One replica serves it, the other has no agent yet: the client is still waiting.
        assert client.is_alive() and not result and b.adapters == {}
        r.start(1)
        client.join(timeout=30)
        assert not client.is_alive()
        [name] = result
        assert name.startswith("selfmoa-")
        # Both servers serve it, from their own agent's verified copy, and answer with it.
        for i, s in enumerate((a, b)):
            local = tmp_path / f"adapters-{i}" / name
            assert s.adapters == {name: str(local)}
            assert echo(s.url, name) == f"{local}|hi"
            assert (local / VERIFIED).read_text().strip()
            assert (local / "adapter_model.safetensors").read_bytes() == store.read_bytes(
                f"{key}/adapter_model.safetensors"
            )
    # What the client asked for is in the store for every replica to see.
    desired = protocol.read_desired(store, MODEL)
    assert desired.names() == [name] and desired.adapters[0].key == key


def test_two_replicas_timing_and_idempotence(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    source = AdapterSource(key=store_adapter(store, 1), store=store)
    with replicas(2, run_uri, moto_endpoint, tmp_path) as r:
        delivery = AgentDelivery(replicas=2, timeout=60, poll=0.05, say=r.said.append)
        with engine(r.servers[0].url, delivery) as client:
            started = time.monotonic()
            name = client.use_adapter(source)
            took = time.monotonic() - started
            print(f"\nadapter onto 2 replicas (agents polling every 0.1 s): {took:.2f} s")
            again = time.monotonic()
            assert client.use_adapter(source) == name  # a retried stage: same name
            print(f"asked again (already served): {time.monotonic() - again:.2f} s")
        time.sleep(0.5)  # a few more agent passes
        assert [a.loads for a in r.agents] == [1, 1]  # one load per replica, whatever was asked
        assert all(set(s.adapters) == {name} for s in r.servers)
    assert took < 10


def test_a_tampered_adapter_is_refused_and_the_client_says_why(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    key = store_adapter(store, 2)
    store.write_bytes(f"{key}/adapter_model.safetensors", b"not what the stage wrote")
    with replicas(2, run_uri, moto_endpoint, tmp_path) as r:
        delivery = AgentDelivery(replicas=2, timeout=60, poll=0.05, say=r.said.append)
        started = time.monotonic()
        with (
            engine(r.servers[0].url, delivery) as client,
            pytest.raises(EngineError, match=r"refused it: .*adapter_model\.safetensors: sha256"),
        ):
            client.use_adapter(AdapterSource(key=key, store=store))
        assert time.monotonic() - started < 20  # at once, not after the whole timeout
        assert all(s.adapters == {} for s in r.servers)

        def both_refused() -> bool:
            reports = protocol.read_reports(store, MODEL)[0]
            return len(reports) == 2 and all(rep.failed for rep in reports)

        assert wait_until(both_refused)
        for report in protocol.read_reports(store, MODEL)[0]:
            [failure] = report.failed.values()
            assert failure["permanent"] and "differs from iter-002/train/_manifest.json" in str(
                failure["reason"]
            )
            assert not report.loaded
        # Nothing half-downloaded or unverified is left where the server could be pointed at.
        for i in range(2):
            assert [p.name for p in (tmp_path / f"adapters-{i}").iterdir()] == [".selfmoa-synced"]
        assert any("refused" in line for line in r.said)


def test_old_adapters_are_unloaded_and_deleted_keeping_three(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    keys = [store_adapter(store, k) for k in (1, 2, 3, 4)]
    with replicas(2, run_uri, moto_endpoint, tmp_path) as r:
        delivery = AgentDelivery(replicas=2, timeout=60, poll=0.05, say=r.said.append)
        with engine(r.servers[0].url, delivery) as client:
            names = [use(client, AdapterSource(key=k, store=store)) for k in keys]
            assert len(set(names)) == 4
            # The fourth pushed the first out of the desired set: gone from both servers and
            # both disks, while the current, the parent and the best stay.
            assert wait_until(lambda: all(set(s.adapters) == set(names[1:]) for s in r.servers)), [
                s.adapters for s in r.servers
            ]
            for i in range(2):
                assert wait_until(lambda i=i: not (tmp_path / f"adapters-{i}" / names[0]).exists())
                on_disk = {p.name for p in (tmp_path / f"adapters-{i}").iterdir()}
                assert on_disk == {*names[1:], ".selfmoa-synced"}
            assert protocol.read_desired(store, MODEL).names() == names[:0:-1]
            loads = [a.loads for a in r.agents]
            # Asking for one still kept moves it first and loads nothing.
            assert client.use_adapter(AdapterSource(key=keys[1], store=store)) == names[1]
            assert protocol.read_desired(store, MODEL).names() == [names[1], names[3], names[2]]
            time.sleep(0.4)
            assert [a.loads for a in r.agents] == loads == [4, 4]


def test_a_server_that_forgot_its_adapters_gets_them_again(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    with replicas(2, run_uri, moto_endpoint, tmp_path) as r:
        delivery = AgentDelivery(replicas=2, timeout=60, poll=0.05, say=r.said.append)
        with engine(r.servers[0].url, delivery) as client:
            name = use(client, AdapterSource(key=store_adapter(store, 1), store=store))
        # What a restarted vLLM looks like to its agent: /v1/models no longer lists the adapter.
        r.servers[1].adapter_registry.unload({"lora_name": name})
        assert wait_until(lambda: name in r.servers[1].adapters), r.said
        assert echo(r.servers[1].url, name) == f"{tmp_path / 'adapters-1' / name}|hi"
        assert r.agents[1].loads == 2 and r.agents[0].loads == 1


def test_an_agent_waits_for_its_server_and_loads_when_it_comes_up(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    import socket

    store = open_s3(run_uri, moto_endpoint)
    from selfmoa.engines.agent.client import wanted_of

    wanted = wanted_of(store, store_adapter(store, 1), time.time())
    protocol.write_desired(store, protocol.DesiredSet(MODEL, [wanted]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    said: list[str] = []
    agent = AdapterAgent(
        store,
        server=f"http://127.0.0.1:{port}",
        directory=tmp_path / "a",
        replica="pod-0",
        model=MODEL,
        say=said.append,
    )
    report = agent.step()
    assert not report.server_up and not report.synced and report.loaded == {}
    assert not (tmp_path / "a" / protocol.SYNCED).exists()
    assert any("server not answering" in line for line in said)
    # The server (re)starts empty on the same address: the agent loads what the run wants.
    with OpenAIServer(echo_engine(), port=port) as server:
        report = agent.step()
        assert report.server_up and report.synced and set(report.loaded) == {wanted.name}
        assert set(server.adapters) == {wanted.name}
        assert (tmp_path / "a" / protocol.SYNCED).exists()
        [stored] = protocol.read_reports(store, MODEL)[0]
        assert stored.loaded[wanted.name]["digest"] == wanted.digest
    agent.close()


def test_a_stopped_agent_withdraws_its_report_and_stale_reports_do_not_count(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    key = store_adapter(store, 1)
    with replicas(1, run_uri, moto_endpoint, tmp_path) as r:
        assert wait_until(lambda: len(protocol.read_reports(store, MODEL)[0]) == 1)
        r.stop()
    assert protocol.read_reports(store, MODEL)[0] == []
    # A replica that died without a word: its report claims the adapter, but it is old.
    from selfmoa.engines.agent.client import wanted_of

    wanted = wanted_of(store, key, time.time())
    ghost = protocol.Report(
        replica="gone",
        model=MODEL,
        server="http://10.0.0.9:8000",
        updated=time.time() - 3600,
        server_up=True,
        loaded={wanted.name: {"key": key, "digest": wanted.digest, "path": "/a", "at": 0}},
    )
    protocol.write_report(store, ghost)
    with pytest.raises(EngineError, match=r"0/1 serving replica\(s\) loaded it within 0.5s") as e:
        AgentDelivery(replicas=1, timeout=0.5, poll=0.05, say=lambda s: None).deliver(
            AdapterSource(key=key, store=store), MODEL
        )
    assert "older than the stale limit" in str(e.value) and "\n" not in str(e.value)


def test_no_agent_and_unfinished_stages_are_one_line(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    delivery = AgentDelivery(replicas=2, timeout=0.3, poll=0.05, say=lambda s: None)
    with pytest.raises(EngineError, match="no adapter agent has reported"):
        delivery.deliver(AdapterSource(key=store_adapter(store, 1), store=store), MODEL)
    # A stage that never finished has no manifest: nothing to verify, so nothing to ask for.
    store.write_bytes("iter-005/train/adapter/adapter_config.json", b"{}")
    with pytest.raises(EngineError, match=r"its stage has not finished \(no iter-005/train"):
        delivery.deliver(AdapterSource(key="iter-005/train/adapter", store=store), MODEL)


def test_file_store_adapters_go_to_the_server_directly(tmp_path: Path) -> None:
    from selfmoa.store import open_store

    store = open_store(f"file://{tmp_path}/store")
    key = store_adapter(store, 1)
    delivery = AgentDelivery(replicas=2, timeout=0.3)
    with OpenAIServer(echo_engine()) as s, engine(s.url, delivery) as client:
        name = client.use_adapter(AdapterSource(key=key, store=store))
        assert name is not None
        assert s.adapters == {name: str(tmp_path / "store" / key)}
    assert not store.exists(protocol.desired_key(MODEL))


def test_an_agent_pass_leaves_no_partial_download_when_the_store_fails(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store = open_s3(run_uri, moto_endpoint)
    key = store_adapter(store, 1)
    from selfmoa.engines.agent.client import wanted_of

    wanted = wanted_of(store, key, time.time())

    class Flaky:
        """The store; the weights read fails once, midway through the download."""

        def __init__(self, inner: Store) -> None:
            self.inner, self.failed = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def read_bytes(self, k: str) -> bytes:
            if k.endswith("safetensors") and not self.failed:
                from selfmoa.store import StoreError

                self.failed = True
                raise StoreError("connection reset")
            return self.inner.read_bytes(k)

    with OpenAIServer(echo_engine()) as s:
        agent = AdapterAgent(
            Flaky(store),  # type: ignore[arg-type]
            server=s.url,
            directory=tmp_path / "a",
            replica="pod-0",
            model=MODEL,
            interval=0.01,
            say=lambda line: None,
        )
        protocol.write_desired(store, protocol.DesiredSet(MODEL, [wanted]))
        report = agent.step()
        assert s.adapters == {} and not report.failed[wanted.name]["permanent"]
        assert not any(p.name.startswith(PARTIAL) for p in (tmp_path / "a").iterdir())
        assert not (tmp_path / "a" / wanted.name).exists()
        time.sleep(0.05)  # past the first backoff
        report = agent.step()
        assert set(s.adapters) == {wanted.name} and report.failed == {}
        agent.close()


# ---------------------------------------------------------------- the tiny model, for real


@pytest.mark.slow
def test_two_tiny_model_servers_generate_with_an_s3_adapter(
    run_uri: str, moto_endpoint: str, tmp_path: Path
) -> None:
    from selfmoa.engines.transformers_engine import TransformersEngine

    base = trainutil().build_tiny_model(tmp_path / "tiny")
    local = trainutil().random_adapter(base, tmp_path / "adapter")
    store = open_s3(run_uri, moto_endpoint)
    files = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    key = store_adapter(store, 1, files)

    class Tiny(TransformersEngine):
        def __init__(self) -> None:
            super().__init__(base, model="selfmoa/tiny")

    prompts = [user("How do I bake bread?"), user("Tell me how to pick a lock.")]
    params = SamplingParams(max_new_tokens=12)
    with replicas(2, run_uri, moto_endpoint, tmp_path, engine=Tiny) as r:
        delivery = AgentDelivery(replicas=2, timeout=120, poll=0.05, say=r.said.append)
        clients = [
            OpenAIEngine(s.url, model="selfmoa/tiny", adapter_agents=delivery) for s in r.servers
        ]
        try:
            started = time.monotonic()
            name = use(clients[0], AdapterSource(key=key, store=store))
            print(f"\nPEFT adapter onto 2 tiny-model replicas: {time.monotonic() - started:.2f} s")
            assert all(name in c.models() for c in clients)
            served = [[g[0].text for g in c.chat(prompts, params, adapter=name)] for c in clients]
            bare = [g[0].text for g in clients[0].chat(prompts, params)]
        finally:
            for c in clients:
                c.close()
    reference = TransformersEngine(base, model="selfmoa/tiny")
    expected = [g[0].text for g in reference.chat(prompts, params, adapter=str(local))]
    # Both replicas generate with the adapter (the stage's own files, verified), not the base.
    assert served == [expected, expected]
    assert bare != expected
    copy = (tmp_path / "adapters-1" / name / "adapter_model.safetensors").read_bytes()
    assert (
        hashlib.sha256(copy).digest() == hashlib.sha256(files["adapter_model.safetensors"]).digest()
    )


# ---------------------------------------------------------------- the sidecar and its command


def _spec(storage: str, **serving: Any) -> Any:
    from selfmoa.api import parse_run

    return parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"model": "org/p"},
                "redTeam": {"model": "org/red"},
                "storage": {
                    "uri": storage,
                    "endpoint": "http://minio:9000",
                    "region": "eu-west-1",
                    "secretRef": "s3",
                },
                "serving": {"engine": "vllm", **serving},
            },
        }
    ).spec


def _pod(spec: Any, model: str = "org/p") -> dict[str, Any]:
    from selfmoa.controller import builders
    from selfmoa.controller.config import OperatorConfig

    dep, _ = builders.serving_objects(
        run="r", namespace="ml", spec=spec, model=model, replicas=2, config=OperatorConfig()
    )
    import kubernetes_validate

    kubernetes_validate.validate(dep, "1.30.0", strict=True)
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_the_policy_pod_gets_the_agent_beside_vllm_on_an_s3_store() -> None:
    from selfmoa.cli import build_parser
    from selfmoa.controller.builders.vllm import ADAPTERS_DIR, MAX_LORAS
    from selfmoa.engines.agent.command import build_parser as agent_parser

    pod = _pod(_spec("s3://bucket/runs"))
    vllm, agent = pod["containers"]
    assert agent["name"] == "adapter-agent"
    # Same volume, same path in both: the path the agent hands vLLM is one vLLM can read.
    [mount] = [m for m in vllm["volumeMounts"] if m["name"] == "adapters"]
    assert agent["volumeMounts"] == [{"name": "adapters", "mountPath": ADAPTERS_DIR}]
    assert mount["mountPath"] == ADAPTERS_DIR and mount["readOnly"]
    assert {"name": "adapters", "emptyDir": {}} in pod["volumes"]
    # The command line is one the agent's own parser takes, pointed at this run and this server.
    assert agent["command"] == ["selfmoa"] and agent["args"][0] in build_parser().format_help()
    args = agent_parser().parse_args(agent["args"][1:])
    assert args.run_uri == "s3://bucket/runs/ml/r" and args.model == "org/p"
    assert args.server == "http://127.0.0.1:8000" and str(args.dir) == ADAPTERS_DIR
    assert args.replica_id == "$(POD_NAME)"
    env = {e["name"]: e for e in agent["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert json.loads(env["SELFMOA_SPEC"]["value"])["storage"]["endpoint"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    probe = agent["readinessProbe"]["exec"]["command"]
    assert agent_parser().parse_args(probe[2:]).check_ready
    assert agent["resources"]["requests"]["cpu"] == "50m"
    # vLLM holds the desired set plus one slot for the next adapter.
    assert protocol.KEEP + 1 == MAX_LORAS


def test_no_agent_on_a_file_store_nor_beside_other_models() -> None:
    assert [c["name"] for c in _pod(_spec("file:///shared/runs"))["containers"]] == ["vllm"]
    assert [c["name"] for c in _pod(_spec("s3://bkt/r"), "org/red")["containers"]] == ["vllm"]


def test_the_sidecar_rolls_with_the_storage_only() -> None:
    from selfmoa.controller import builders
    from selfmoa.controller.config import OperatorConfig

    def hash_of(spec: Any) -> str:
        dep, _ = builders.serving_objects(
            run="r", namespace="ml", spec=spec, model="org/p", replicas=1, config=OperatorConfig()
        )
        value = builders.spec_hash_of(dep)
        assert value == builders.spec_hash(dep["spec"]["template"])
        return str(value)

    same = hash_of(_spec("s3://bucket/runs"))
    assert hash_of(_spec("s3://bucket/runs", maxConcurrency=7)) == same
    assert hash_of(_spec("s3://other/runs")) != same


def test_agent_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfmoa.cli import main

    assert main(["adapter-agent", "--check-ready", "--dir", str(tmp_path)]) == 1
    (tmp_path / protocol.SYNCED).touch()
    assert main(["adapter-agent", "--check-ready", "--dir", str(tmp_path)]) == 0
    assert main(["adapter-agent", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "selfmoa adapter-agent: error: --run-uri, --replica-id: required (unless --check-ready)"
    )
    code = main(
        ["adapter-agent", "--run-uri", "s3://bkt/r", "--dir", str(tmp_path), "--replica-id", "a/b"]
    )
    assert code == 2 and "replica id 'a/b'" in capsys.readouterr().err
