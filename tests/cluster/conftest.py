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
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # realcluster, kubelet: importable in any import mode

from realcluster import (  # noqa: E402
    MEASURED,
    Cluster,
    Installed,
    OperatorProcess,
    install_chart,
    kubelet_player,
    measure,
    operator_requests,
    prepare_run_namespace,
    s3_server,
    start_cluster,
    start_operator,
    stop_cluster,
    used_permissions,
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
    c = start_cluster(tmp_path_factory.mktemp("controlplane"))
    try:
        yield c
    finally:
        base = tmp_path_factory.getbasetemp()
        # Over every scenario (test_install's no-403 check runs before the serving ones): what
        # the chart's rules must cover (the RBAC review of issue 13 reads this line).
        used = used_permissions(operator_requests(c))
        measure(
            "operator (group, resource, verb) used, whole session",
            [" ".join(u) for u in sorted(used)],
        )
        try:
            stop_cluster(c, base / "controlplane-logs")
        finally:
            (base / "measurements.json").write_text(json.dumps(MEASURED, indent=2, default=str))


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with the bucket `selfmoa`: endpoint, bucket, keys."""
    with s3_server() as s:
        yield s


@pytest.fixture(scope="session")
def kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with kubelet_player(cluster, tmp_path_factory.mktemp("nodes")) as player:
        yield player


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
    return prepare_run_namespace(cluster, s3)
