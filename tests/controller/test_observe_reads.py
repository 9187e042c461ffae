"""What one observation asks for, and in which order: the storage Secret once per resync, the
Jobs before the store."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from selfmoa.api import parse_run
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.executor import KubernetesExecutor
from selfmoa.controller.job_index import JobIndex, RunKey
from selfmoa.controller.runtime import Runtime
from selfmoa.store.file import FileStore


class SecretKube:
    """Answers the run's storage Secret, counting the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.key = "key-1"

    async def get(self, path: str) -> dict[str, object] | None:
        assert path == "/api/v1/namespaces/ml/secrets/creds"
        self.reads += 1
        data = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": self.key}
        return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _executor(rt: Runtime) -> KubernetesExecutor:
    spec = parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"model": "m"},
                "storage": {"uri": "s3://bkt/p", "secretRef": "creds"},
            },
        }
    ).spec
    return KubernetesExecutor(rt, name="r", namespace="ml", spec=spec, owner=None)


async def test_the_storage_secret_is_read_once_per_resync_and_a_rotated_key_is_seen() -> None:
    kube = SecretKube()
    rt = Runtime(config=OperatorConfig(), kube=kube, resync_seconds=60.0)  # type: ignore[arg-type]
    for _ in range(3):
        ex = _executor(rt)
        await ex.open()
        assert ex.credentials == ("id", "key-1")
        # The operator reads the store with the run's Secret, as its Jobs do.
        assert ex._store().credentials == ("id", "key-1")  # type: ignore[attr-defined]
    assert kube.reads == 1
    kube.key = "key-2"
    rt.resync_seconds = 0.0  # the resync has passed: read again
    ex = _executor(rt)
    await ex.open()
    assert ex.credentials == ("id", "key-2")
    assert kube.reads == 2


async def test_the_jobs_are_read_before_the_store(tmp_path: Path) -> None:
    # A Job seen complete must have its manifest in the store read: the read starts after.
    order: list[str] = []

    class Jobs(JobIndex):
        def jobs(self, key: RunKey, max_age: float) -> list[dict[str, Any]] | None:
            order.append("jobs")
            return []

    class Store(FileStore):
        def list(self, prefix: str = "") -> Any:
            order.append("store")
            return super().list(prefix)

        def exists(self, key: str) -> bool:
            order.append("store")
            return super().exists(key)

    rt = Runtime(config=OperatorConfig(shared_file_storage=True), kube=SecretKube())  # type: ignore[arg-type]
    rt.jobs = Jobs()
    spec = parse_run(
        {"metadata": {"name": "r"}, "spec": {"policy": {"model": "selfmoa/tiny"}}}
    ).spec
    ex = KubernetesExecutor(rt, name="r", namespace="ml", spec=spec, owner=None)
    store = Store(str(tmp_path))
    ex._store = lambda: store  # type: ignore[method-assign]
    for _ in range(2):  # the first pass lists the store, the next asks one manifest
        await ex.observe()
    assert order and order[0] == "jobs", order
    assert order.index("store") > order.index("jobs")
    second = order[order.index("jobs", 1) :]
    assert second[0] == "jobs" and "store" in second, order
