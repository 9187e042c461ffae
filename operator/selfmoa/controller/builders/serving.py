"""The serving children of a run: one vLLM Deployment and its Service per model.

The Deployment's pod template carries `selfmoa.dev/spec-hash`, a hash of the template itself.
Any change of what the server runs (image, arguments, resources, model source) changes the
template, so the Deployment rolls; and the reconcile detects drift by comparing the annotation
of the live Deployment with the one built from the current spec (`spec_hash_of`), without
diffing objects the API server has filled with defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller.builders.common import (
    ANNOTATION_MODEL,
    LABEL_COMPONENT,
    LABEL_RUN,
    LABEL_SERVING,
    adopt,
    placement,
    pod_security,
    queue_labels,
    run_labels,
    serving_name,
    shm_volume,
)
from selfmoa.controller.builders.vllm import (
    ADAPTERS_DIR,
    ADAPTERS_VOLUME,
    VLLM_PORT,
    adapter_agent_container,
    fetch_model_container,
    model_source,
    needs_adapter_agent,
    vllm_container,
)
from selfmoa.controller.config import OperatorConfig
from selfmoa.run import layout

ANNOTATION_SPEC_HASH: Final = "selfmoa.dev/spec-hash"


def spec_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template (its own spec-hash annotation left out).

    Canonical JSON, so the value is the same in every process and on every machine.
    """
    meta = dict(template.get("metadata") or {})
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION_SPEC_HASH
    }
    meta["annotations"] = annotations
    canonical = json.dumps(
        {"metadata": meta, "spec": template.get("spec") or {}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_hash_of(deployment: Mapping[str, Any]) -> str | None:
    """The spec-hash a (live or built) Deployment's pod template carries, if any."""
    template = (deployment.get("spec") or {}).get("template") or {}
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None


def serving_template(
    spec: AlignmentRunSpec,
    model: str,
    labels: Mapping[str, str],
    config: OperatorConfig,
    run_uri: str,
) -> dict[str, Any]:
    """The vLLM server's pod template, annotated with its own spec-hash.

    The policy's pod gets the adapter agent beside vLLM when the run's store is not `file://`.
    """
    source = model_source(model, spec, run_uri)
    server = vllm_container(spec, model, source, config)
    pod: dict[str, Any] = {
        "securityContext": pod_security(),
        "containers": [server],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            shm_volume(spec.serving.gpus_per_model),
            *source.volumes,
        ],
        **placement(config),
    }
    if needs_adapter_agent(spec, model):
        server["volumeMounts"].append(
            {"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_DIR, "readOnly": True}
        )
        pod["containers"].append(adapter_agent_container(spec, model, run_uri, config))
        pod["volumes"].append({"name": ADAPTERS_VOLUME, "emptyDir": {}})
    if source.fetch:
        pod["initContainers"] = [fetch_model_container(spec, model, source, config)]
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod}
    template["metadata"]["annotations"] = {ANNOTATION_SPEC_HASH: spec_hash(template)}
    return template


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
    """The vLLM Deployment and its Service for one model (the policy gets runtime LoRA loading,
    and the adapter agent when the store is not `file://`)."""
    name = serving_name(run, model)
    labels = {
        **run_labels(run),
        LABEL_COMPONENT: "serving",
        LABEL_SERVING: name,
        **queue_labels(spec),
    }
    selector = {LABEL_RUN: labels[LABEL_RUN], LABEL_SERVING: name}
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
            "template": serving_template(
                spec, model, labels, config, layout.run_uri(spec.storage.uri, namespace, run)
            ),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return adopt(deployment, owner), adopt(service, owner)
