"""The stage Job: one `selfmoa stage NAME` run for one stage of one iteration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from selfmoa.api import stage_container
from selfmoa.api.exits import Exit
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller.builders.common import (
    adopt,
    container_security,
    hf_token_env,
    job_name,
    merge_resources,
    model_cache_env,
    model_cache_mount,
    model_cache_volume,
    placement,
    pod_security,
    queue_labels,
    shm_volume,
    stage_labels,
    storage_env,
)
from selfmoa.controller.builders.vllm import endpoints
from selfmoa.controller.config import OperatorConfig
from selfmoa.run import layout, stage_models, stage_table


def stage_runner_container(
    *,
    run: str,
    namespace: str,
    spec: AlignmentRunSpec,
    call: stage_container.StageCall,
    config: OperatorConfig,
) -> dict[str, Any]:
    """The container running `selfmoa stage NAME` (in a stage Job or a TrainJob): its argv, env
    and mounts as `selfmoa.api.stage_container` defines them."""
    definition = stage_table.get(call.stage)
    literal = stage_container.stage_env(
        spec.wire(), endpoints(run, namespace, spec) if definition.uses_endpoints else None
    )
    loads = definition.loads_models
    env: list[dict[str, Any]] = [
        *({"name": k, "value": v} for k, v in literal.items()),
        *storage_env(spec),
        *(hf_token_env(spec) if loads else []),
        *(model_cache_env(spec) if loads else []),
    ]
    training = definition.trains
    # A stage that loads a model in-process runs where training runs: its device and memory.
    gpus = stage_models.gpus_for(spec, call.stage)
    # The run's resources are sized for its model: a stage that loads none (pairs, or respond
    # talking to vLLM) keeps the small class, not 8 CPUs and 32Gi held while it reads JSON.
    sized = training or bool(stage_models.in_process_models(spec, call.stage))
    heavy = stage_models.resource_class(spec, call.stage) == "train"
    resources = merge_resources(
        config.train_resources if heavy else config.stage_resources,
        {k: v for k, v in spec.trainer.resources.wire().items() if v} if sized else {},
        gpus,
    )
    # More than one GPU on the node: one training process per GPU (torchrun).
    nproc = max(1, spec.trainer.gpus) if training else 1
    return {
        "name": "stage",
        "image": spec.trainer.image or config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": stage_container.launch_command([], nproc=nproc),
        "args": call.args(),
        "env": env,
        "resources": resources,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": stage_container.WORK_VOLUME, "mountPath": stage_container.WORK_DIR},
            *(model_cache_mount(spec) if loads else []),
        ],
    }


def pod_failure_policy(container: str) -> dict[str, Any]:
    """Retries that follow the stage's exit code (`selfmoa.api.exits`): bad input (2) fails the
    Job at once, since no retry can fix it; a Pod evicted or preempted (DisruptionTarget) is
    not counted against backoffLimit; a failed stage (1) and an outage (75) are retried up to
    backoffLimit. API servers before 1.26 ignore the field (and retry every failure)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [int(Exit.BAD_INPUT)],
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def stage_volumes(spec: AlignmentRunSpec, stage: str) -> list[dict[str, Any]]:
    """The stage pod's volumes: its scratch space, and the model cache volume when the stage
    loads models (a stage that doesn't is not tied to where the claim can be mounted)."""
    loads = stage_table.get(stage).loads_models
    return [
        {"name": stage_container.WORK_VOLUME, "emptyDir": {}},
        *(model_cache_volume(spec) if loads else []),
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
    labels = {**stage_labels(run, iteration, stage), **queue_labels(spec)}
    call = stage_container.StageCall(
        stage, layout.run_uri(spec.storage.uri, namespace, run), iteration, parent
    )
    container = stage_runner_container(
        run=run, namespace=namespace, spec=spec, call=call, config=config
    )
    shm: list[dict[str, Any]] = []
    if stage_table.get(stage).trains and spec.trainer.gpus > 1:
        # NCCL between the training processes needs more than the default 64 MiB /dev/shm.
        shm = [shm_volume(spec.trainer.gpus)]
        container["volumeMounts"].append({"name": "shm", "mountPath": "/dev/shm"})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [*stage_volumes(spec, stage), *shm],
        **placement(config),
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.trainer.backoff_limit,
        "activeDeadlineSeconds": spec.trainer.active_deadline_seconds,
        "podFailurePolicy": pod_failure_policy(container["name"]),
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
