"""What one observation asks the API server for: the storage Secret once per resync."""

from __future__ import annotations

import base64

from selfmoa.api import parse_run
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.executor import KubernetesExecutor
from selfmoa.controller.runtime import Runtime


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
    assert kube.reads == 1
    kube.key = "key-2"
    rt.resync_seconds = 0.0  # the resync has passed: read again
    ex = _executor(rt)
    await ex.open()
    assert ex.credentials == ("id", "key-2")
    assert kube.reads == 2
