"""The vLLM server's containers: its arguments and environment, and where it reads the model.

With `spec.modelCache`, a hub model is read in place from the claim, mounted read-only (no
download, no copy); an init container only checks that the model was seeded there, and fails
with one line naming the seed command when it wasn't (vLLM's own error would be a traceback
about a missing config.json).

The policy's server gets runtime LoRA loading, so the stages hot-load each iteration's adapter
into the warm server instead of restarting it (minutes of model loading each time). With an
`s3://` store the server can't read the adapters, so the policy's pod also gets the adapter agent
(`selfmoa adapter-agent`, see `selfmoa.engines.agent`): it downloads and verifies the adapters the
run asks for into an `emptyDir` both containers mount at `ADAPTERS_DIR`, and loads them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Final

from selfmoa.api import stage_container
from selfmoa.api.spec import AlignmentRunSpec, ServingEngine
from selfmoa.controller.builders.common import (
    container_security,
    hf_token_env,
    merge_resources,
    model_cache_mount,
    model_cache_volume,
    serving_name,
    storage_env,
)
from selfmoa.controller.config import OperatorConfig
from selfmoa.store.model_cache import (
    MODELS,
    hub_key,
    is_hub_model,
    parse_hub_model,
)

VLLM_PORT: Final = 8000
VLLM_COMMAND: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")
#: The ranks vLLM accepts for `--max-lora-rank` (its `LoRAConfig` refuses any other value).
LORA_RANKS: Final = (8, 16, 32, 64, 128, 256, 320, 512)
#: Adapters the policy server holds at once: the current, parent and best iterations' adapters,
#: plus one slot so a new adapter can load before an old one is unloaded.
MAX_LORAS: Final = 4
MODEL_DIR: Final = "/model"
#: The adapter agent's volume, at the same path in the agent and in vLLM (the agent hands vLLM
#: paths inside it).
ADAPTERS_VOLUME: Final = "adapters"
ADAPTERS_DIR: Final = "/adapters"
AGENT_COMMAND: Final = "adapter-agent"
#: Small: the agent polls the store and copies a few adapter files. The memory limit bounds an
#: adapter file held in memory while its sha256 is checked.
AGENT_RESOURCES: Final = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}


def max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds a rank-`r` adapter."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"training.lora.r: {r} is above vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def endpoints(run: str, namespace: str, spec: AlignmentRunSpec) -> dict[str, str]:
    """Model id -> base URL of its in-cluster vLLM Service (what stage Jobs get)."""
    if spec.serving.engine != ServingEngine.vllm:
        return {}
    return {
        m: f"http://{serving_name(run, m)}.{namespace}.svc:{VLLM_PORT}/v1" for m in spec.models()
    }


@dataclass(frozen=True)
class ModelSource:
    """Where a server reads its model: the `--model` argument and the volume it needs."""

    argument: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    #: What an init container runs first to put the model in the volume (None: nothing).
    fetch: list[str] | None = None
    #: The init container only checks that the model is there (the model cache volume).
    check: bool = False


#: The init container's model sync (`selfmoa fetch`).
FETCH: Final = stage_container.FETCH_COMMAND


def _hub_ref(model: str, spec: AlignmentRunSpec) -> tuple[str, str]:
    """(repo, revision): `policy.revision` pins the policy's model only."""
    return parse_hub_model(model, spec.policy.revision if model == spec.policy.model else None)


def model_source(model: str, spec: AlignmentRunSpec, run_uri: str) -> ModelSource:
    """Where the server reads `model`: a `pvc://CLAIM/PATH`, an `s3://` copy, or a hub model —
    from the model cache volume (`spec.modelCache`) in place, else from the run's model cache
    when the run's store is remote (the stages read the same copy, and the hub is asked once per
    run), else downloaded by vLLM itself."""
    if model.startswith("pvc://"):
        claim, _, sub = model.removeprefix("pvc://").partition("/")
        return ModelSource(
            f"{MODEL_DIR}/{sub}".rstrip("/"),
            [{"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            [{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        )
    volume = [{"name": "model", "emptyDir": {}}]
    mount = [{"name": "model", "mountPath": MODEL_DIR}]
    if model.startswith("s3://"):
        return ModelSource(MODEL_DIR, volume, mount, fetch=[*FETCH, model, MODEL_DIR])
    # The tiny model is built, never downloaded: its server builds it as the stages do.
    hub = is_hub_model(model)
    if hub and spec.model_cache is not None:
        repo, rev = _hub_ref(model, spec)
        root = stage_container.MODEL_CACHE_DIR
        check = [*FETCH, "--hub", repo, "--revision", rev, "--check", root]
        return ModelSource(
            f"{root}/{MODELS}/{hub_key(repo, rev)}",
            model_cache_volume(spec),
            model_cache_mount(spec),
            fetch=check,
            check=True,
        )
    if hub and not spec.storage.uri.startswith("file://"):
        repo, rev = _hub_ref(model, spec)
        cached = f"{MODEL_DIR}/{MODELS}/{hub_key(repo, rev)}"
        fetch = [*FETCH, "--hub", repo, "--revision", rev, "--run-uri", run_uri, MODEL_DIR]
        return ModelSource(cached, volume, mount, fetch=fetch)
    return ModelSource(model)


def vllm_args(spec: AlignmentRunSpec, model: str, source: ModelSource) -> list[str]:
    """The server's arguments: the model, the port, LoRA for the policy, then the user's extras."""
    args = ["--model", source.argument, "--served-model-name", model]
    args += ["--host", "0.0.0.0", "--port", str(VLLM_PORT)]
    is_policy = model == spec.policy.model
    if spec.policy.revision and is_policy and source.argument == model:
        args += ["--revision", spec.policy.revision]
    if spec.serving.gpus_per_model > 1:
        # One server spans its GPUs; without this vLLM uses one and the rest sit idle.
        args += ["--tensor-parallel-size", str(spec.serving.gpus_per_model)]
    if is_policy:
        rank = max_lora_rank(spec.training.lora.r)
        args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(MAX_LORAS)]
    return args + list(spec.serving.extra_args)


def vllm_env(spec: AlignmentRunSpec, model: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/cache"},
        {"name": "HF_HOME", "value": "/cache/hf"},
    ]
    if model == spec.policy.model:
        # Enables /v1/load_lora_adapter and /v1/unload_lora_adapter (off by default in vLLM).
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    return env + hf_token_env(spec)


def fetch_model_container(
    spec: AlignmentRunSpec, model: str, source: ModelSource, config: OperatorConfig
) -> dict[str, Any]:
    """The init container that puts the model into the server's model volume (or, with a model
    cache volume, checks that it is there)."""
    # Only the storage settings (a check: the model cache's, which its message names): the
    # fetch needs nothing else, and the whole spec here would change the pod template (and
    # restart the server) on every unrelated spec edit.
    wire = spec.wire()
    storage = {"modelCache": wire["modelCache"]} if source.check else {"storage": wire["storage"]}
    return {
        "name": "check-model" if source.check else "fetch-model",
        "image": spec.trainer.image or config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(source.fetch or []),
        "env": [
            {"name": stage_container.SPEC_ENV, "value": json.dumps(storage, sort_keys=True)},
            # A check reads a local volume: it gets no credentials.
            *([] if source.check else [*storage_env(spec), *hf_token_env(spec)]),
        ],
        "resources": copy.deepcopy(config.stage_resources),
        "securityContext": container_security(),
        # The error line of a failed fetch is what the run's condition shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": copy.deepcopy(source.mounts),
    }


def vllm_container(
    spec: AlignmentRunSpec, model: str, source: ModelSource, config: OperatorConfig
) -> dict[str, Any]:
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": "vllm",
        "image": spec.serving.image or config.serving_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(VLLM_COMMAND),
        "args": vllm_args(spec, model, source),
        "env": vllm_env(spec, model),
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "readinessProbe": {**copy.deepcopy(health), "periodSeconds": 5, "failureThreshold": 3},
        # Model loading can take minutes: don't let liveness kill a server still starting.
        "startupProbe": {**copy.deepcopy(health), "periodSeconds": 10, "failureThreshold": 90},
        "resources": merge_resources(config.serving_resources, {}, spec.serving.gpus_per_model),
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "cache", "mountPath": "/cache"},
            {"name": "shm", "mountPath": "/dev/shm"},
            *source.mounts,
        ],
    }


def needs_adapter_agent(spec: AlignmentRunSpec, model: str) -> bool:
    """The policy's server, when its adapters live where it can't read them (not `file://`)."""
    return model == spec.policy.model and not spec.storage.uri.startswith("file://")


def adapter_agent_container(
    spec: AlignmentRunSpec, model: str, run_uri: str, config: OperatorConfig
) -> dict[str, Any]:
    """The sidecar that loads the run's adapters into the vLLM server of its pod."""
    # Only the storage settings, as for the model fetch: the whole spec would roll the server on
    # every unrelated spec edit.
    storage = {"storage": spec.wire()["storage"]}
    args = [
        AGENT_COMMAND,
        "--run-uri",
        run_uri,
        "--server",
        f"http://127.0.0.1:{VLLM_PORT}",
        "--dir",
        ADAPTERS_DIR,
        "--replica-id",
        "$(POD_NAME)",
        "--model",
        model,
    ]
    return {
        "name": "adapter-agent",
        "image": spec.trainer.image or config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(stage_container.COMMAND),
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": stage_container.SPEC_ENV, "value": json.dumps(storage, sort_keys=True)},
            *storage_env(spec),
        ],
        # Ready once the server holds every adapter the run wants: a new replica joins the
        # Service only when it can answer for them.
        "readinessProbe": {
            "exec": {
                "command": [
                    *stage_container.COMMAND,
                    AGENT_COMMAND,
                    "--check-ready",
                    "--dir",
                    ADAPTERS_DIR,
                ]
            },
            "periodSeconds": 5,
            "failureThreshold": 1,
        },
        "resources": copy.deepcopy(AGENT_RESOURCES),
        "securityContext": container_security(),
        "volumeMounts": [{"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_DIR}],
    }
