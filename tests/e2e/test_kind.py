"""End to end on a kind cluster (tests/e2e/run_kind.sh), plus checks of its inputs that run anywhere.

The kind test needs docker with a reachable engine, kind, kubectl and helm; it is skipped
otherwise (on the development machine the docker client exists but there is no engine).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from selfmoa.api import parse_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = HERE / "run_kind.sh"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def e2e_unavailable() -> str | None:
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker info failed: {e}"
    if info.returncode != 0:
        return "the docker engine is not reachable (docker info failed)"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(3900)
def test_kind_end_to_end(tmp_path: Path) -> None:
    reason = e2e_unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, timeout=3600, check=False)
    assert proc.returncode == 0, f"run_kind.sh failed; logs in {tmp_path / 'logs'}"


# ------------------------------------------------------------------ inputs (no cluster needed)


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_e2e_run_is_tiny_cpu_with_minio_storage() -> None:
    (example,) = [
        d for d in docs(ROOT / "manifests/examples/tiny-cpu.yaml") if d["kind"] == "AlignmentRun"
    ]
    e2e = {d["kind"]: d for d in docs(HERE / "run-minio.yaml")}
    run = e2e["AlignmentRun"]
    parsed = parse_run(run)
    assert parsed.spec.storage.uri.startswith("s3://")
    assert parsed.spec.storage.secret_ref == e2e["Secret"]["metadata"]["name"]
    assert parsed.spec.storage.endpoint == "http://minio.minio.svc.cluster.local:9000"
    assert set(e2e["Secret"]["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    spec = copy.deepcopy(run["spec"])
    spec.pop("storage")
    assert spec == example["spec"], "tests/e2e/run-minio.yaml drifted from tiny-cpu.yaml"
    assert run["metadata"]["name"] == example["metadata"]["name"]
    # The script checks the artifacts of the run and bucket it names.
    text = SCRIPT.read_text()
    bucket = parsed.spec.storage.uri.removeprefix("s3://").split("/")[0]
    assert f'RUN="{run["metadata"]["name"]}"' in text and f'BUCKET="{bucket}"' in text


@pytest.mark.parametrize("version", ["1.28.0", kubernetes_validate.latest_version()])
def test_minio_manifest_is_valid(version: str) -> None:
    objects = docs(HERE / "minio.yaml") + [
        d for d in docs(HERE / "run-minio.yaml") if d["kind"] == "Secret"
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_kind_values_render() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "chart"))
    from render import render_objects

    values = yaml.safe_load((HERE / "values-kind.yaml").read_text())
    values["image"].update(repository="selfmoa-operator", tag="e2e")
    values["config"]["workerImage"] = "selfmoa-worker:e2e"
    objects = render_objects(values)
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert (c["image"], c["imagePullPolicy"]) == ("selfmoa-operator:e2e", "Never")
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert (config["workerImage"], config["imagePullPolicy"]) == ("selfmoa-worker:e2e", "Never")
    assert dep["metadata"]["name"] == "selfmoa"  # run_kind.sh reads deployment/selfmoa's logs
