"""Stage after stage, Pod after Pod: the tiny base is built once per run, hub models are
downloaded once per run, and every other user fetches the run's copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selfmoa.api import parse_run, stage_container
from selfmoa.api.spec import TINY_MODEL
from selfmoa.engines.provider import EngineProvider
from selfmoa.store import Store, open_store
from selfmoa.store.model_cache import hub_key, manifest_key, parse_hub_model


def _spec(model: str = TINY_MODEL) -> Any:
    return parse_run({"metadata": {"name": "r"}, "spec": {"policy": {"model": model}}}).spec


class FakeBuild:
    calls = 0

    def __call__(self, dest: Path, progress: Any) -> dict[str, Any]:
        FakeBuild.calls += 1
        (dest / "config.json").write_text("{}")
        (dest / "model.safetensors").write_bytes(b"w" * 100)
        return {"seconds": 0}


def test_the_tiny_base_is_built_by_the_first_pod_and_fetched_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfmoa.tiny import build

    monkeypatch.setattr(build, "build", FakeBuild())
    # A base the package doesn't ship (another build seed): built, then shared.
    monkeypatch.setattr(build, "SHIPPED", tmp_path / "not-shipped")
    FakeBuild.calls = 0
    shared = open_store(f"file://{tmp_path / 'run'}")
    paths = []
    for pod in ("pod-a", "pod-b", "pod-c"):  # each Pod has its own disk
        monkeypatch.setenv("SELFMOA_CACHE", str(tmp_path / pod))
        paths.append(EngineProvider(_spec(), shared=shared).model_path(TINY_MODEL))
    assert FakeBuild.calls == 1
    assert all((p / "model.safetensors").read_bytes() == b"w" * 100 for p in paths)
    assert shared.exists(manifest_key(f"tiny-{build.cache_key()}"))


def test_hub_models_are_snapshotted_into_a_remote_store_once(
    s3_bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    downloads: list[tuple[str, str]] = []

    def snapshot_download(repo_id: str, revision: str, local_dir: str) -> str:
        downloads.append((repo_id, revision))
        Path(local_dir, "config.json").write_text('{"model_type": "qwen2"}')
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    shared: Store = open_store(f"s3://{s3_bucket}/runs/ns/r", endpoint=moto_endpoint)
    for pod in ("pod-a", "pod-b"):
        monkeypatch.setenv("SELFMOA_CACHE", str(tmp_path / pod))
        p = EngineProvider(_spec("Org/Model-0.5B"), shared=shared).model_path("Org/Model-0.5B")
        assert (p / "config.json").exists()
    assert downloads == [("Org/Model-0.5B", "main")]
    assert shared.exists(manifest_key(hub_key("Org/Model-0.5B", "main")))


def test_hub_references() -> None:
    assert parse_hub_model("hf://org/m@v1") == ("org/m", "v1")
    assert parse_hub_model("org/m", "abc") == ("org/m", "abc")
    assert hub_key("org/m", "main") != hub_key("org/m", "v1")
    assert hub_key("Org/M", "main").startswith("hf-org-m-")


def test_the_vllm_server_starts_from_the_runs_copy_of_a_hub_model(
    s3_bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import huggingface_hub

    from selfmoa.controller import builders
    from selfmoa.controller.config import OperatorConfig
    from selfmoa.store.fetch_command import main as fetch_main

    spec = parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"model": "Org/Model-0.5B"},
                "serving": {"engine": "vllm"},
                "storage": {"uri": f"s3://{s3_bucket}/runs", "endpoint": moto_endpoint},
            },
        }
    ).spec
    dep, _ = builders.serving_objects(
        run="r",
        namespace="ns",
        spec=spec,
        model="Org/Model-0.5B",
        replicas=1,
        config=OperatorConfig(),
    )
    pod = dep["spec"]["template"]["spec"]
    (init,) = [c for c in pod["initContainers"] if c["name"] == "fetch-model"]
    args = pod["containers"][0]["args"]
    served = args[args.index("--model") + 1]
    assert served == f"/model/models/{hub_key('Org/Model-0.5B', 'main')}"

    downloads: list[str] = []

    def snapshot_download(repo_id: str, revision: str, local_dir: str) -> str:
        downloads.append(repo_id)
        Path(local_dir, "config.json").write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    env = {e["name"]: e.get("value") for e in init["env"]}
    monkeypatch.setenv("SELFMOA_SPEC", env["SELFMOA_SPEC"])
    assert json.loads(env["SELFMOA_SPEC"])["storage"]["endpoint"] == moto_endpoint
    # Two servers start (or one restarts): the hub is asked once, by the first.
    for pod_dir in ("pod-a", "pod-b"):
        dest = tmp_path / pod_dir
        argv = init["command"][len(stage_container.FETCH_COMMAND) :]
        argv = [a if a != "/model" else str(dest) for a in argv]
        assert fetch_main(argv) == 0
        assert (Path(served.replace("/model", str(dest), 1)) / "config.json").exists()
    assert downloads == ["Org/Model-0.5B"]
    # A run on a local file:// store lets vLLM download the hub model itself.
    local = parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"model": "Org/M"},
                "serving": {"engine": "vllm"},
                "storage": {"uri": f"file://{tmp_path}"},
            },
        }
    ).spec
    dep, _ = builders.serving_objects(
        run="r", namespace="ns", spec=local, model="Org/M", replicas=1, config=OperatorConfig()
    )
    assert "initContainers" not in dep["spec"]["template"]["spec"]
