"""Pure builders of the child objects of an AlignmentRun: plain dicts, no API calls.

Every child carries an owner reference to its run (`kopf.adopt`), the run/iteration/stage labels
the executor selects on, a non-root securityContext and resource requests/limits. Names are
deterministic, so a restarted operator finds (and adopts) what it created before instead of
creating a duplicate.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from selfmoa import layout
from selfmoa.api.spec import AlignmentRunSpec, ServingEngine
from selfmoa.controller.config import OperatorConfig
from selfmoa.engines.provider import ENDPOINTS_ENV

LABEL_RUN = "selfmoa.dev/run"
LABEL_ITERATION = "selfmoa.dev/iteration"
LABEL_STAGE = "selfmoa.dev/stage"
LABEL_SERVING = "selfmoa.dev/serving"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_MODEL = "selfmoa.dev/model"
SPEC_ENV = "SELFMOA_SPEC"
#: Stages that train (GPUs for the Job; serving may be released meanwhile).
TRAINING_STAGES = frozenset({"train", "reset"})
VLLM_PORT = 8000
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


def _merge_resources(
    base: Mapping[str, Any], requests: Mapping[str, Any], gpus: int
) -> dict[str, Any]:
    res: dict[str, Any] = copy.deepcopy(dict(base))
    if requests:
        res.setdefault("requests", {}).update(requests)
    if gpus > 0:
        # Extended resources must have requests == limits.
        res.setdefault("requests", {})[GPU] = str(gpus)
        res.setdefault("limits", {})[GPU] = str(gpus)
    return res


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _placement(config: OperatorConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.node_selector:
        out["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        out["tolerations"] = copy.deepcopy(config.tolerations)
    return out


def endpoints(run: str, namespace: str, spec: AlignmentRunSpec) -> dict[str, str]:
    """Model id -> base URL of its in-cluster vLLM Service (what stage Jobs get)."""
    if spec.serving.engine != ServingEngine.vllm:
        return {}
    return {
        m: f"http://{serving_name(run, m)}.{namespace}.svc:{VLLM_PORT}/v1" for m in spec.models()
    }


def storage_env(spec: AlignmentRunSpec) -> list[dict[str, Any]]:
    ref = spec.storage.secret_ref
    if not ref:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": ref, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def stage_job(
    *,
    run: str,
    namespace: str,
    spec: AlignmentRunSpec,
    iteration: int,
    stage: str,
    parent: int,
    config: OperatorConfig,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Job running `selfmoa stage NAME` for one stage of one iteration."""
    labels = stage_labels(run, iteration, stage)
    training = stage in TRAINING_STAGES
    run_uri = layout.run_uri(spec.storage.uri, namespace, run)
    env: list[dict[str, Any]] = [
        {"name": SPEC_ENV, "value": json.dumps(spec.wire(), sort_keys=True)},
        {"name": "HOME", "value": "/work"},
        {"name": "SELFMOA_CACHE", "value": "/work/cache"},
        *storage_env(spec),
    ]
    eps = endpoints(run, namespace, spec)
    if eps and not training:
        env.append({"name": ENDPOINTS_ENV, "value": json.dumps(eps, sort_keys=True)})
    res_requests = {k: v for k, v in spec.trainer.resources.wire().items() if v}
    resources = _merge_resources(
        config.train_resources if training else config.stage_resources,
        res_requests,
        spec.trainer.gpus if training else 0,
    )
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": _pod_security(),
        "containers": [
            {
                "name": "stage",
                "image": spec.trainer.image or config.worker_image,
                "imagePullPolicy": config.image_pull_policy,
                "command": ["selfmoa"],
                "args": [
                    "stage",
                    stage,
                    "--run-uri",
                    run_uri,
                    "--iteration",
                    str(iteration),
                    "--parent",
                    str(parent),
                ],
                "env": env,
                "resources": resources,
                "securityContext": _container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            }
        ],
        "volumes": [{"name": "work", "emptyDir": {}}],
        **_placement(config),
    }
    if config.service_account_name:
        pod["serviceAccountName"] = config.service_account_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.trainer.backoff_limit,
        "activeDeadlineSeconds": spec.trainer.active_deadline_seconds,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if config.job_ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.job_ttl_seconds_after_finished
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(run, iteration, stage),
            "namespace": namespace,
            "labels": labels,
            "annotations": {"selfmoa.dev/parent": str(parent)},
        },
        "spec": job_spec,
    }
    return adopt(job, owner)


def _model_source(
    model: str,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(--model argument, init containers, volumes, mounts) for a hub id, s3:// URI or pvc:// path."""
    if model.startswith("pvc://"):
        claim, _, sub = model.removeprefix("pvc://").partition("/")
        vol = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": "/model", "readOnly": True}
        return f"/model/{sub}".rstrip("/"), [], [vol], [mount]
    if model.startswith("s3://"):
        vol = {"name": "model", "emptyDir": {}}
        mount = {"name": "model", "mountPath": "/model"}
        return "/model", [], [vol], [mount]
    return model, [], [], []


def serving_objects(
    *,
    run: str,
    namespace: str,
    spec: AlignmentRunSpec,
    model: str,
    replicas: int,
    config: OperatorConfig,
    owner: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The vLLM Deployment and its Service for one model (the policy gets runtime LoRA loading)."""
    name = serving_name(run, model)
    labels = {**run_labels(run), LABEL_COMPONENT: "serving", LABEL_SERVING: name}
    selector = {LABEL_RUN: labels[LABEL_RUN], LABEL_SERVING: name}
    source, init, volumes, mounts = _model_source(model)
    is_policy = model == spec.policy.model
    args = [
        "--model",
        source,
        "--served-model-name",
        model,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
    ]
    if spec.policy.revision and is_policy and source == model:
        args += ["--revision", spec.policy.revision]
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/cache"},
        {"name": "HF_HOME", "value": "/cache/hf"},
    ]
    if is_policy:
        r = spec.training.lora.r
        args += ["--enable-lora", "--max-lora-rank", str(max(8, r)), "--max-loras", "4"]
        # Lets the stages load each iteration's adapter into the warm server (no restart).
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    args += list(spec.serving.extra_args)
    if spec.serving.hf_token_secret_ref:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": spec.serving.hf_token_secret_ref, "key": "HF_TOKEN"}
                },
            }
        )
    if model.startswith("s3://"):
        init = [
            {
                "name": "fetch-model",
                "image": spec.trainer.image or config.worker_image,
                "imagePullPolicy": config.image_pull_policy,
                "command": ["python", "-m", "selfmoa.controller.fetch", model, "/model"],
                "env": [
                    {"name": SPEC_ENV, "value": json.dumps(spec.wire(), sort_keys=True)},
                    *storage_env(spec),
                ],
                "resources": copy.deepcopy(config.stage_resources),
                "securityContext": _container_security(),
                "volumeMounts": mounts,
            }
        ]
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.serving.image or config.serving_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # Model loading can take minutes: don't let liveness kill a server still starting.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 90,
        },
        "resources": _merge_resources(config.serving_resources, {}, spec.serving.gpus_per_model),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "cache", "mountPath": "/cache"},
            {"name": "shm", "mountPath": "/dev/shm"},
            *mounts,
        ],
    }
    pod: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            *volumes,
        ],
        **_placement(config),
    }
    if init:
        pod["initContainers"] = init
    if config.service_account_name:
        pod["serviceAccountName"] = config.service_account_name
    meta = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {ANNOTATION_MODEL: model},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # GPUs can't hold two servers during a rolling update.
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return adopt(deployment, owner), adopt(service, owner)
