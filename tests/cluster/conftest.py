"""The real-control-plane tier: kube-apiserver + kube-controller-manager 1.20 on loopback.

Opt-in (it builds Kubernetes once, ~10 min, and runs real Pods as processes): the tests here are
marked `cluster` and skipped unless `--cluster` (when this directory is on the command line) or
`SELFMOA_CLUSTER=1` is given; `make test-cluster` does that. Tests marked `slow_cluster` (a whole
AlignmentRun) run with them.

Session fixtures, each started once and shared by the scenario files:
- `cluster`: controlplane.sh build + start (a run dir under pytest's temp dir), stop at the end
  (its logs and the audit log are copied to `<basetemp>/controlplane-logs` first);
- `s3`: moto's S3 server on 127.0.0.1 with a bucket, for run artifacts;
- `kubelet`: the Pod player (tests/cluster/kubelet.py) for the operator's children;
- `chart`: the chart installed into `selfmoa-system` as a user would;
- `operator`: `selfmoa operator` as a local process with the chart ServiceAccount's token only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # realcluster, kubelet: importable in any import mode

from realcluster import (  # noqa: E402
    BUCKET,
    MEASURED,
    ROOT,
    RUN_NS,
    S3_KEYS,
    SCRIPT,
    VENV_BIN,
    Cluster,
    Installed,
    OperatorProcess,
    chart_values,
    install_chart,
    measure,
    sa_token,
    script,
    start_operator,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        default=False,
        help="run the real-control-plane tests (tests/cluster; builds Kubernetes once)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real control plane (tests/cluster)")
    config.addinivalue_line(
        "markers", "slow_cluster: a whole AlignmentRun on the real control plane (minutes)"
    )


def _enabled(config: pytest.Config) -> bool:
    opt = False
    # The option is registered only when this directory is on the command line.
    with contextlib.suppress(ValueError):
        opt = bool(config.getoption("--cluster"))
    return opt or os.environ.get("SELFMOA_CLUSTER") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only tests that use the control plane are opt-in; the player's pure rules always run.
    skip = pytest.mark.skip(reason="real control plane tier: pass --cluster or SELFMOA_CLUSTER=1")
    for item in items:
        if HERE in Path(str(item.path)).parents and "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            if not _enabled(config):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASURED:
        return
    terminalreporter.section("real control plane: measurements")
    for k, v in MEASURED.items():
        terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("controlplane")
    env = dict(os.environ, SELFMOA_CLUSTER_RUN=str(run_dir))
    t = time.monotonic()
    script("build", env=env, timeout=30 * 60)
    measure("build (cached or cold), s", round(time.monotonic() - t, 1))
    t = time.monotonic()
    try:
        script("start", env=env, timeout=180)
    except BaseException:
        script("stop", env=env, timeout=60)  # whatever it had started
        raise
    measure("start to ready, s", round(time.monotonic() - t, 1))
    exports = subprocess.run(
        ["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    bin_dir = Path(exports.split("PATH=")[1].split(":")[0].strip("'\""))
    port = (run_dir / "api.port").read_text().strip()
    c = Cluster(
        run_dir=run_dir,
        bin_dir=bin_dir,
        server=f"https://127.0.0.1:{port}",
        ca=run_dir / "pki" / "ca.crt",
        admin_token=(run_dir / "pki" / "admin.token").read_text().strip(),
        kubeconfig=run_dir / "admin.kubeconfig",
        env=env,
    )
    measure("control plane RSS after start, MiB", c.rss_mib())
    try:
        yield c
    finally:
        measure("control plane RSS at the end, MiB", c.rss_mib())
        logs = tmp_path_factory.getbasetemp() / "controlplane-logs"
        logs.mkdir(exist_ok=True)
        for f in run_dir.glob("*.log"):
            shutil.copy(f, logs / f.name)
        (tmp_path_factory.getbasetemp() / "measurements.json").write_text(
            json.dumps(MEASURED, indent=2, default=str)
        )
        script("stop", env=env, timeout=60)


# ------------------------------------------------------------------------------ S3


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with the bucket `selfmoa`: endpoint, bucket, keys."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    try:
        yield {"endpoint": endpoint, "bucket": BUCKET, **S3_KEYS}
    finally:
        server.stop()


# ------------------------------------------------------------------------------ kubelet


@pytest.fixture(scope="session")
def kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import logging

    from kubelet import KubeletPlayer, parse_dockerfile_env

    root = tmp_path_factory.mktemp("nodes")
    handler = logging.FileHandler(root / "kubelet.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("kubelet-player")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    player = KubeletPlayer(
        cluster.api_client(),
        root,
        venv_bin=VENV_BIN,
        # Only the operator's children: the chart's own operator Pod is replaced by a local
        # process (the `operator` fixture), so it stays Pending.
        label_selector="app.kubernetes.io/managed-by=selfmoa-operator",
        worker_image=chart_values()["config"]["workerImage"],
        image_env=parse_dockerfile_env(ROOT / "images" / "worker" / "Dockerfile"),
    )
    with player:
        yield player
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def chart(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    installed = install_chart(cluster, {}, tmp_path_factory.mktemp("chart"))
    measure("chart install", f"{installed.method}, {installed.seconds}s")
    return installed


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    chart: Installed,
    s3: dict[str, str],
    kubelet: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = start_operator(cluster, chart, s3, tmp_path_factory.mktemp("operator"))
    time.sleep(3)
    assert op.proc.poll() is None, f"the operator exited:\n{op.text()}"
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="session")
def run_namespace(cluster: Cluster, s3: dict[str, str]) -> str:
    """`team-a` with the S3 credentials Secret the runs' spec.storage.secretRef names."""
    cluster.kubectl("create", "namespace", RUN_NS, check=False)
    cluster.kubectl(
        "-n",
        RUN_NS,
        "create",
        "secret",
        "generic",
        "s3-credentials",
        *(f"--from-literal={k}={s3[k]}" for k in S3_KEYS),
    )
    sa_token(cluster, RUN_NS, "default")  # until it exists, Pods in the namespace are refused
    return RUN_NS
