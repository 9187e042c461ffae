"""The seeded model cache volume (`spec.modelCache`, issue 14): `selfmoa fetch
--hub` writes it atomically, a killed seed leaves nothing complete-looking, the provider reads a
seeded model in place (no hub, no store) and names the seed command for a missing one, and the
example seed Job seeds exactly what the example run's pods read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from selfmoa.api import parse_run, stage_container
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.provider import EngineProvider
from selfmoa.store import Store
from selfmoa.store import model_cache as mc
from selfmoa.store.fetch_command import main as fetch_main
from selfmoa.store.model_cache import COMPLETE, MODELS, ModelCacheMiss, hub_key, seeded

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "model-cache-seed.yaml"


class FakeHub:
    """`huggingface_hub.snapshot_download`: writes a two-file model and counts downloads."""

    def __init__(self, delays: tuple[float, ...] = (), fail: bool = False) -> None:
        self.delays, self.fail = delays, fail
        self.calls: list[tuple[str, str]] = []

    def __call__(self, repo_id: str, revision: str, local_dir: str) -> str:
        n = len(self.calls)
        self.calls.append((repo_id, revision))
        config = {"repo": repo_id, "rev": revision, "download": n}
        Path(local_dir, "config.json").write_text(json.dumps(config))
        time.sleep(self.delays[n] if n < len(self.delays) else 0.0)
        if self.fail:
            raise OSError("connection reset by peer")
        Path(local_dir, "model.safetensors").write_bytes(repo_id.encode() * 100)
        return local_dir


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def _spec(**over: Any) -> AlignmentRunSpec:
    spec = {
        "policy": {"model": "Org/Policy", "revision": "v2"},
        "judges": [
            {"name": "refusal", "objective": "safety"},
            {"name": "helper", "objective": "helpfulness", "kind": "classifier",
             "model": "Org/Judge"},
        ],
        "modelCache": {"pvc": "models", "subPath": "hub"},
        **over,
    }  # fmt: skip
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


def _no_store() -> Any:
    store = mock.Mock(spec=Store)
    store.uri = "s3://bucket/runs/ns/r"
    return store


def _complete_looking(root: Path) -> list[Path]:
    """Model directories a reader would take (the marker inside, or a non-hidden name)."""
    models = root / MODELS
    if not models.exists():
        return []
    return [p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_fetch_seeds_the_layout_the_readers_use_once(tmp_path: Path, hub: FakeHub) -> None:
    assert fetch_main(["--hub", "Org/Policy@v2", str(tmp_path)]) == 0
    assert fetch_main(["--hub", "hf://Org/Policy", "--revision", "v2", str(tmp_path)]) == 0
    assert hub.calls == [("Org/Policy", "v2")]  # the second seed found it complete
    path = tmp_path / MODELS / hub_key("Org/Policy", "v2")
    assert (path / COMPLETE).is_file() and seeded(tmp_path, hub_key("Org/Policy", "v2")) == path
    config = json.loads((path / "config.json").read_text())
    assert config == {"repo": "Org/Policy", "rev": "v2", "download": 0}
    # Nothing half-made is left beside it (the temporary directory was renamed).
    assert [p.name for p in _complete_looking(tmp_path)] == [path.name]
    assert not [p for p in (tmp_path / MODELS).iterdir() if p.is_dir() and p != path]


def test_a_failed_seed_leaves_nothing_complete_looking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(fail=True))
    assert fetch_main(["--hub", "Org/Policy", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "fetch: error: connection reset by peer"
    assert _complete_looking(tmp_path) == []
    assert not [p for p in (tmp_path / MODELS).iterdir() if p.is_dir()]


def test_a_killed_seed_leaves_nothing_complete_looking_and_a_rerun_completes(
    tmp_path: Path, hub: FakeHub
) -> None:
    cache, started = tmp_path / "cache", tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        import huggingface_hub

        def slow(repo_id, revision, local_dir):
            Path(local_dir, "config.json").write_text("{{}}")
            Path(local_dir, "model.safetensors").write_bytes(b"half")
            Path({str(started)!r}).write_text("x")
            time.sleep(120)

        huggingface_hub.snapshot_download = slow
        from selfmoa.store.fetch_command import main
        sys.exit(main(["--hub", "Org/Policy", {str(cache)!r}]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the seed never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    key = hub_key("Org/Policy", "main")
    assert seeded(cache, key) is None and _complete_looking(cache) == []
    leftovers = [p for p in (cache / MODELS).iterdir() if p.is_dir()]
    assert leftovers and all(p.name.startswith(f".{key}-") for p in leftovers)
    with pytest.raises(ModelCacheMiss):
        mc.seeded_hub("Org/Policy", "main", cache)
    # Rerun (the Job's retry): the model appears whole.
    assert fetch_main(["--hub", "Org/Policy", str(cache)]) == 0
    found = seeded(cache, key)
    assert found is not None and (found / "model.safetensors").read_bytes() == b"Org/Policy" * 100


def test_concurrent_seeds_keep_one_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    fake = FakeHub(delays=(0.2, 0.4, 0.1))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)

    @contextlib.contextmanager
    def no_lock(path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield

    codes: list[int] = []

    def seed() -> None:
        codes.append(fetch_main(["--hub", "Org/Policy", str(tmp_path)]))

    def race() -> None:
        threads = [threading.Thread(target=seed) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    race()  # one node: the lock makes the second seeder wait and reuse the first's copy
    assert codes == [0, 0] and len(fake.calls) == 1
    # Two nodes on a filesystem without working locks: both download; the copy installed first
    # (download 2, the faster) stays, since readers may already hold it open.
    monkeypatch.setattr(mc, "_locked", no_lock)
    other = tmp_path / "other"
    codes.clear()

    def seed_other() -> None:
        codes.append(fetch_main(["--hub", "Org/Policy", str(other)]))

    threads = [threading.Thread(target=seed_other) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0] and len(fake.calls) == 3
    found = seeded(other, hub_key("Org/Policy", "main"))
    assert found is not None and (found / "model.safetensors").read_bytes() == b"Org/Policy" * 100
    assert json.loads((found / "config.json").read_text())["download"] == 2
    assert [p for p in (other / MODELS).iterdir() if p.is_dir()] == [found]


def test_the_provider_reads_seeded_models_in_place_without_hub_or_store(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fetch_main(["--hub", "Org/Policy@v2", str(tmp_path)]) == 0
    assert fetch_main(["--hub", "Org/Judge", str(tmp_path)]) == 0
    hub.calls.clear()
    monkeypatch.setenv(stage_container.MODEL_CACHE_ENV, str(tmp_path))
    store = _no_store()
    provider = EngineProvider(_spec(), shared=store)
    policy = provider.model_path("Org/Policy")
    # policy.revision pins the policy only: the judge's copy is main's.
    judge = provider.model_path("Org/Judge")
    assert policy == tmp_path / MODELS / hub_key("Org/Policy", "v2")
    assert judge == tmp_path / MODELS / hub_key("Org/Judge", "main")
    assert provider.model_path("hf://Org/Judge@main") == judge
    assert hub.calls == [] and store.method_calls == []


def test_a_model_missing_from_the_volume_names_the_seed_command(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(stage_container.MODEL_CACHE_ENV, str(tmp_path))
    store = _no_store()
    with pytest.raises(ModelCacheMiss) as e:
        EngineProvider(_spec(), shared=store).model_path("Org/Judge")
    message = str(e.value)
    assert "\n" not in message and "PVC models" in message
    assert "selfmoa fetch --hub Org/Judge --revision main /cache/hub" in message
    assert hub.calls == [] and store.method_calls == []


def test_the_check_fails_with_one_line_in_the_termination_message(
    tmp_path: Path,
    hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(stage_container.TERMINATION_LOG_ENV, str(log))
    monkeypatch.setenv(stage_container.SPEC_ENV, json.dumps({"modelCache": {"pvc": "models"}}))
    check = ["--hub", "Org/Policy", "--revision", "v2", "--check", str(tmp_path)]
    # A cache volume that lacks the model is the setup's fault, not an outage: exit code 2.
    assert fetch_main(check) == 2
    line = log.read_text()
    assert "\n" not in line and line.startswith("Org/Policy@v2 is not in PVC models")
    assert "--hub Org/Policy --revision v2 /cache" in line
    assert capsys.readouterr().err.strip() == f"fetch: error: {line}"
    assert hub.calls == []  # a check never downloads
    assert fetch_main(["--hub", "Org/Policy@v2", str(tmp_path)]) == 0
    capsys.readouterr()
    assert fetch_main(check) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / MODELS / hub_key("Org/Policy", "v2"))


def test_serve_of_a_model_missing_from_the_volume_is_one_line(
    tmp_path: Path,
    hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from selfmoa.engines.server import main as serve_main

    log = tmp_path / "termination-log"
    monkeypatch.setenv(stage_container.TERMINATION_LOG_ENV, str(log))
    monkeypatch.setenv(stage_container.MODEL_CACHE_ENV, str(tmp_path))
    assert serve_main(["--model", "Org/Policy", "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err == log.read_text()
    assert err.startswith("selfmoa serve: error: Org/Policy@main is not in the model cache")
    assert hub.calls == []


def test_the_example_seed_job_seeds_what_the_example_runs_pods_read(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfmoa.controller import builders
    from selfmoa.controller.config import DEFAULT_WORKER_IMAGE, OperatorConfig

    docs = {d["kind"]: d for d in yaml.safe_load_all(EXAMPLE.read_text())}
    for kind in ("PersistentVolumeClaim", "Job"):
        kubernetes_validate.validate(docs[kind], "1.30.0", strict=True)
    run = parse_run(docs["AlignmentRun"])
    assert run.spec.model_cache is not None
    assert run.spec.model_cache.pvc == docs["PersistentVolumeClaim"]["metadata"]["name"]
    pod = docs["Job"]["spec"]["template"]["spec"]
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == run.spec.model_cache.pvc
    for c in pod["containers"]:
        assert c["image"] == DEFAULT_WORKER_IMAGE
        assert c["command"] == list(stage_container.FETCH_COMMAND)
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == claim["name"]]
        assert mount["mountPath"] == mc.SEED_MOUNT and not mount.get("readOnly")
        args = [str(tmp_path) if a == mount["mountPath"] else a for a in c["args"]]
        assert fetch_main(args) == 0
    # Every hub model of the run is now read from the volume, by the stages and the servers.
    monkeypatch.setenv(stage_container.MODEL_CACHE_ENV, str(tmp_path))
    provider = EngineProvider(run.spec, shared=_no_store())
    downloads = len(hub.calls)
    for model in run.spec.models():
        assert (provider.model_path(model) / COMPLETE).is_file()
        dep, _ = builders.serving_objects(
            run=run.name, namespace="ns", spec=run.spec, model=model, replicas=1,
            config=OperatorConfig(),
        )  # fmt: skip
        (init,) = dep["spec"]["template"]["spec"]["initContainers"]
        argv = [
            str(tmp_path) if a == stage_container.MODEL_CACHE_DIR else a for a in init["command"]
        ]
        assert fetch_main(argv[len(stage_container.FETCH_COMMAND) :]) == 0
    assert len(hub.calls) == downloads
