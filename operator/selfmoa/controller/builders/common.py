"""What every child of an AlignmentRun shares: names, labels, ownership, security, placement."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from selfmoa.api import stage_container
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller.config import OperatorConfig

LABEL_RUN = "selfmoa.dev/run"
LABEL_ITERATION = "selfmoa.dev/iteration"
LABEL_STAGE = "selfmoa.dev/stage"
LABEL_SERVING = "selfmoa.dev/serving"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_MODEL = "selfmoa.dev/model"
#: Kueue's labels: the LocalQueue a workload goes to, and its WorkloadPriorityClass.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GPU = "nvidia.com/gpu"
MAX_NAME = 63


def truncate(name: str, limit: int = MAX_NAME) -> str:
    """`name` if it fits, else a prefix plus a hash of the whole (still unique, still stable)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def job_name(run: str, iteration: int, stage: str) -> str:
    return truncate(f"{run}-i{iteration}-{stage}")


def model_slug(model: str) -> str:
    """A DNS-safe short name for a model id (with a hash: `a/b` and `a-b` stay distinct)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:24].strip("-") or "model"
    return f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def serving_name(run: str, model: str) -> str:
    # Services need a DNS-1035 label: it must start with a letter.
    name = truncate(f"{run}-vllm-{model_slug(model)}")
    return name if name[0].isalpha() else truncate(f"s-{name}")


def run_labels(run: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "selfmoa",
        "app.kubernetes.io/managed-by": "selfmoa-operator",
        LABEL_RUN: truncate(run),
    }


def stage_labels(run: str, iteration: int, stage: str) -> dict[str, str]:
    return {
        **run_labels(run),
        LABEL_COMPONENT: "stage",
        LABEL_ITERATION: str(iteration),
        LABEL_STAGE: stage,
    }


def adopt(obj: dict[str, Any], owner: Mapping[str, Any] | None) -> dict[str, Any]:
    """Owner reference (garbage collection on delete) + the owner's namespace, via Kopf."""
    if owner is not None:
        import kopf

        kopf.adopt(obj, owner=owner)  # type: ignore[arg-type]
    return obj


def merge_resources(
    base: Mapping[str, Any], requests: Mapping[str, Any], gpus: int
) -> dict[str, Any]:
    res: dict[str, Any] = copy.deepcopy(dict(base))
    if requests:
        res.setdefault("requests", {}).update(requests)
    if requests.get("memory"):
        # The run's memory is its limit too: a request above the operator's default limit would
        # make a Pod the API server refuses, and a stage sized by its run is killed at that size.
        res.setdefault("limits", {})["memory"] = requests["memory"]
    if gpus > 0:
        # Extended resources must have requests == limits.
        res.setdefault("requests", {})[GPU] = str(gpus)
        res.setdefault("limits", {})[GPU] = str(gpus)
    return res


#: The worker image's user and group (`USER` in images/worker/Dockerfile, which owns its HOME).
WORKER_UID = 10001


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def placement(config: OperatorConfig) -> dict[str, Any]:
    """Pod-spec fields every child pod gets from the operator's config."""
    out: dict[str, Any] = {}
    if config.node_selector:
        out["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        out["tolerations"] = copy.deepcopy(config.tolerations)
    if config.service_account_name:
        out["serviceAccountName"] = config.service_account_name
    return out


def storage_env(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    ref = spec.storage.secret_ref
    if not ref:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": ref, "key": key}}}
        for key in stage_container.STORAGE_SECRET_KEYS
    ]


def queue_labels(spec: AlignmentRunSpec) -> dict[str, str]:
    """Kueue's labels from the spec: workloads with them wait for admission by the queue."""
    out = {}
    if spec.queue_name:
        out[QUEUE_LABEL] = spec.queue_name
    if spec.priority_class_name:
        out[PRIORITY_LABEL] = spec.priority_class_name
    return out


def hf_token_env(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    """The hub token for gated models, by reference to its Secret (never by value)."""
    secret = spec.serving.hf_token_secret_ref
    if not secret:
        return []
    return [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "HF_TOKEN"}}}
    ]


def shm_volume(gpus: int) -> dict[str, Any]:
    """/dev/shm for NCCL and tensor-parallel workers (the container default, 64 MiB, is too
    small for them): 2 GiB per GPU, at least 2 GiB."""
    return {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{2 * max(1, gpus)}Gi"}}


def model_cache_volume(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    """`spec.modelCache`'s claim as a read-only pod volume (none without one)."""
    cache = spec.model_cache
    if cache is None:
        return []
    claim = {"claimName": cache.pvc, "readOnly": True}
    return [{"name": stage_container.MODEL_CACHE_VOLUME, "persistentVolumeClaim": claim}]


def model_cache_mount(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    """The read-only mount of the model cache volume at `stage_container.MODEL_CACHE_DIR`: no pod ever
    writes it, so concurrent first uses can't corrupt it (seeding is the user's step)."""
    cache = spec.model_cache
    if cache is None:
        return []
    mount: dict[str, Any] = {
        "name": stage_container.MODEL_CACHE_VOLUME,
        "mountPath": stage_container.MODEL_CACHE_DIR,
        "readOnly": True,
    }
    if cache.sub_path:
        mount["subPath"] = cache.sub_path
    return [mount]


def model_cache_env(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    """Tells `selfmoa stage` / `selfmoa serve` where the volume is: hub models come from there."""
    if spec.model_cache is None:
        return []
    return [{"name": stage_container.MODEL_CACHE_ENV, "value": stage_container.MODEL_CACHE_DIR}]
