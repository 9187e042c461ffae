"""Library of the node tier (fixtures live in conftest.py): its addresses, images, chart values
and readings of its Pods. A module of its own: several conftest modules share that name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from realcluster import Cluster, wait_until

NODE_RUN = Path(os.environ.get("SELFMOA_NODE_RUN", f"/tmp/selfmoa-node-{os.getuid()}"))
#: The node's address inside its network namespace (tests/node/node.sh).
NODE_ADDRESS = "10.200.0.1"
API_PORT = 6443
TAG = os.environ.get("SELFMOA_IMAGE_TAG", "dev")
OPERATOR_IMAGE = f"selfmoa/operator:{TAG}"
WORKER_IMAGE = f"selfmoa/worker:{TAG}"
#: The worker image where vLLM's command is `selfmoa serve` (tests/node/vllm_standin).
SERVING_IMAGE = f"selfmoa/vllm-standin:{TAG}"


def chart_values(s3: dict[str, str]) -> dict[str, Any]:
    """What a user of this node sets: the local images, never pulled; the shared store (its
    keys: the Secret `secretRef` names in the run's namespace, which the operator reads too);
    CPU requests sized for a 2-core node (a stage Job, a server with its init container and the
    operator fit at once)."""
    repo, tag = OPERATOR_IMAGE.split(":")
    return {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "config": {
            "workerImage": WORKER_IMAGE,
            "servingImage": SERVING_IMAGE,
            "imagePullPolicy": "Never",
            "storage": {
                "uri": f"s3://{s3['bucket']}/runs",
                "endpoint": s3["endpoint"],
                "region": "us-east-1",
                "secretRef": "s3-credentials",
            },
            "stageResources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "8Gi"},
            },
            "servingResources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "4Gi"},
            },
        },
    }


def pods(node: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = node.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def operator_pod(node: Cluster) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for p in pods(node, "selfmoa-system", "app.kubernetes.io/name=selfmoa"):
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if conds.get("Ready") == "True":
                return p
        return None

    return wait_until("the operator Pod Ready", 180, ready)
