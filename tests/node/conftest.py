"""The node tier: the chart and the examples on a real node, in the images `make images` built.

`make test-node` brings the node up (tests/node/node.sh start: control plane, kubelet with
Docker, kube-scheduler, kube-proxy, CNI, DNS, in a network namespace), runs pytest *inside* that
namespace (the node's addresses exist only there), then takes it all down. Without
SELFMOA_NODE=1 every test here is skipped.

Session fixtures:
- `node`: a handle on the node's control plane (the Cluster type of tests/cluster);
- `s3`: moto's S3 server on the node's address, which the Pods reach through their gateway;
- `chart`: the chart installed as a user would, with the local images (pullPolicy Never) and
  the S3 store as the default storage (its keys in the run namespace's Secret).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))  # realcluster: the tiers share their helpers

from realcluster import (  # noqa: E402
    MEASURED,
    OPERATOR_NS,
    RELEASE,
    Cluster,
    Installed,
    install_chart,
    prepare_run_namespace,
    s3_server,
)
from realnode import API_PORT, NODE_ADDRESS, NODE_RUN, chart_values  # noqa: E402

ENABLED = os.environ.get("SELFMOA_NODE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="node tier: run with `make test-node` (SELFMOA_NODE=1)")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ENABLED and MEASURED:
        terminalreporter.write_sep("-", "node tier measurements")
        for k, v in MEASURED.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session")
def node() -> Cluster:
    cp = NODE_RUN / "cp"
    if not (cp / "admin.kubeconfig").exists():
        pytest.fail(
            f"no node is up ({cp}): run `make test-node`, or `bash tests/node/node.sh start`"
        )
    cache = Path(
        os.environ.get("SELFMOA_CLUSTER_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selfmoa-cluster"
    )
    return Cluster(
        run_dir=cp,
        bin_dir=cache / "bin",
        server=f"https://127.0.0.1:{API_PORT}",
        ca=cp / "pki" / "ca.crt",
        admin_token=(cp / "pki" / "admin.token").read_text().strip(),
        kubeconfig=cp / "admin.kubeconfig",
        env=dict(os.environ),
    )


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    with s3_server(host=NODE_ADDRESS) as s:
        yield s


@pytest.fixture(scope="session")
def chart(node: Cluster, s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Installed:
    t = time.monotonic()
    installed = install_chart(node, chart_values(s3), tmp_path_factory.mktemp("chart"))
    node.kubectl(
        "-n", OPERATOR_NS, "rollout", "status", f"deploy/{RELEASE}", "--timeout=180s"
    )  # fmt: skip
    MEASURED["chart installed to operator Ready, s"] = round(time.monotonic() - t, 1)
    return installed


@pytest.fixture(scope="session")
def run_namespace(node: Cluster, s3: dict[str, str]) -> str:
    return prepare_run_namespace(node, s3)
