"""The multi-node train and reset stages: a Kubeflow Trainer `TrainJob` (trainer.kubeflow.org).

With `trainer.nodes > 1` a training stage runs as a TrainJob instead of a Job: Kubeflow Trainer
(v2) turns it into a JobSet of `nodes` pods from a torch ClusterTrainingRuntime, sets torchrun's
`PET_*` rendezvous variables on each, and reports Complete / Failed like a Job. The TrainJob
carries the stage Job's container (image, argv, environment, resources: one builder for both),
launched under `torchrun -m selfmoa.cli`; runtime patches put the Job's pod security, scratch
volume and placement on its pods.

Trainer's TrainJob conditions are `Suspended`, `Complete` and `Failed` (upstream
pkg/apis/trainer/v1alpha1/trainjob_types.go: TrainJobSuspended, TrainJobComplete, TrainJobFailed;
`metav1.Condition`s in `TrainerV1alpha1TrainJobStatus.conditions`): Complete and Failed are a
Job's condition types, and suspension (Kueue's hold) is `spec.suspend` as on a Job, so the
executor reads both kinds alike.

It is built with the typed models of `kubeflow-trainer-api`, imported inside the functions that
build it: the package loads some 400 modules, which the operator's import (and `--help`) must not
pay for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from selfmoa.api import stage_container
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller.builders.common import (
    LABEL_ITERATION,
    LABEL_RUN,
    LABEL_STAGE,
    adopt,
    container_security,
    job_name,
    placement,
    pod_security,
    queue_labels,
    shm_volume,
    stage_labels,
    truncate,
)
from selfmoa.controller.builders.jobs import stage_runner_container, stage_volumes
from selfmoa.controller.config import DEFAULT_TRAINING_RUNTIME, OperatorConfig
from selfmoa.run import layout, stage_table

TRAINER_GROUP: Final = "trainer.kubeflow.org"
TRAINER_API_VERSION: Final = f"{TRAINER_GROUP}/v1alpha1"
TRAINJOB_KIND: Final = "TrainJob"
TRAINJOB_PLURAL: Final = "trainjobs"
#: The API version's discovery document: 404 when the cluster does not serve Kubeflow Trainer.
TRAINER_DISCOVERY_PATH: Final = f"/apis/{TRAINER_API_VERSION}"
#: The ClusterTrainingRuntime a TrainJob runs on: Kubeflow Trainer's default torch runtime.
#: The torch runtime's replicated job and its trainer container are both called `node`
#: (upstream manifests/base/runtimes/torch_distributed.yaml); the runtime patches target them.
RUNTIME_NODE: Final = "node"
#: Who owns our runtime patch (Trainer keys patches by manager; Kueue adds its own).
PATCH_MANAGER: Final = "selfmoa.dev/operator"
#: JobSet refuses a name whose longest pod name, `<name>-node-<job>-<pod>-<5 random>`, passes
#: 63 characters; with up to 64 nodes that leaves 63 - len("-node-0-63-abcde").
MAX_TRAINJOB_NAME: Final = 47
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SHM_PATH = "/dev/shm"


def runs_as_trainjob(spec: AlignmentRunSpec, stage: str) -> bool:
    """A training stage of a run on more than one node."""
    return spec.trainer.nodes > 1 and stage_table.get(stage).trains


def trainjob_name(run: str, iteration: int, stage: str) -> str:
    """The stage Job's name when TrainJob and JobSet accept it: an RFC 1035 label short enough
    for JobSet's pod names (else a letter first, no dots, and a hashed truncation)."""
    name = job_name(run, iteration, stage)
    if _DNS1035.match(name) and len(name) <= MAX_TRAINJOB_NAME:
        return name
    name = name.replace(".", "-")
    if not name[0].isalpha():
        name = f"t-{name}"
    return truncate(name, MAX_TRAINJOB_NAME)


def not_installed_message(spec: AlignmentRunSpec, runtime: str) -> str:
    """What to install (or change) when the cluster does not serve trainer.kubeflow.org."""
    return (
        f"trainer.nodes: {spec.trainer.nodes} runs the train and reset stages as Kubeflow Trainer "
        f"TrainJobs, but this cluster does not serve {TRAINER_API_VERSION}: install Kubeflow "
        f"Trainer v2 (2.2 or later) with its ClusterTrainingRuntime '{runtime}', and enable the "
        "operator's RBAC for TrainJobs (chart value kubeflowTrainer.enabled=true), or set "
        "trainer.nodes: 1"
    )


def pod_selector(run: str, iteration: int, stage: str) -> dict[str, str]:
    """Labels of the TrainJob's pods (set by its runtime patch), to find their failure."""
    return {LABEL_RUN: truncate(run), LABEL_ITERATION: str(iteration), LABEL_STAGE: stage}


def train_job(
    *,
    run: str,
    namespace: str,
    spec: AlignmentRunSpec,
    iteration: int,
    stage: str,
    parent: int,
    config: OperatorConfig,
    owner: Mapping[str, Any] | None = None,
    runtime: str = DEFAULT_TRAINING_RUNTIME,
) -> dict[str, Any]:
    """The TrainJob running `selfmoa stage NAME` on `trainer.nodes` nodes (the wire dict)."""
    from kubeflow_trainer_api import models as m

    labels = {**stage_labels(run, iteration, stage), **queue_labels(spec)}
    call = stage_container.StageCall(
        stage, layout.run_uri(spec.storage.uri, namespace, run), iteration, parent
    )
    container = stage_runner_container(
        run=run, namespace=namespace, spec=spec, call=call, config=config
    )
    volumes, mounts = _volumes_and_mounts(spec, stage, container)
    patch = _runtime_patch(run, iteration, stage, _pod_patch(config, volumes, mounts))
    job = m.TrainerV1alpha1TrainJob(
        api_version=TRAINER_API_VERSION,
        kind=TRAINJOB_KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=trainjob_name(run, iteration, stage),
            namespace=namespace,
            labels=labels,
            annotations={"selfmoa.dev/parent": str(parent)},
        ),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(
                name=runtime, api_group=TRAINER_GROUP, kind="ClusterTrainingRuntime"
            ),
            trainer=_trainer(spec, container),
            active_deadline_seconds=spec.trainer.active_deadline_seconds,
            runtime_patches=[patch],
        ),
    )
    # `to_dict` is model_dump(by_alias=True, exclude_none=True) plus the generated models' own
    # handling of Kubernetes quantities (a oneOf model that a plain model_dump leaves nested).
    wire: dict[str, Any] = job.to_dict()
    return adopt(wire, owner)


def _volumes_and_mounts(
    spec: AlignmentRunSpec, stage: str, container: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The stage's volumes and the container's mounts, with a /dev/shm volume on GPU nodes."""
    volumes = stage_volumes(spec, stage)
    mounts: list[dict[str, Any]] = list(container.get("volumeMounts") or [])
    gpus = spec.trainer.gpus
    if gpus > 0 and all(v.get("mountPath") != _SHM_PATH for v in mounts):
        # NCCL moves data between a node's GPUs through /dev/shm.
        shm = shm_volume(gpus)
        volumes.append(shm)
        mounts.append({"name": shm["name"], "mountPath": _SHM_PATH})
    return volumes, mounts


def _pod_patch(
    config: OperatorConfig, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> Any:
    """The runtime patch of each node's pod: the Job's pod security, volumes and placement."""
    from kubeflow_trainer_api import models as m

    place = placement(config)
    return m.TrainerV1alpha1PodSpecPatch(
        security_context=m.IoK8sApiCoreV1PodSecurityContext.from_dict(pod_security()),
        volumes=[m.IoK8sApiCoreV1Volume.from_dict(v) for v in volumes],
        containers=[
            m.TrainerV1alpha1ContainerPatch(
                name=RUNTIME_NODE,
                security_context=m.IoK8sApiCoreV1SecurityContext.from_dict(container_security()),
                volume_mounts=[m.IoK8sApiCoreV1VolumeMount.from_dict(v) for v in mounts],
            )
        ],
        node_selector=place.get("nodeSelector"),
        tolerations=[m.IoK8sApiCoreV1Toleration.from_dict(t) for t in place["tolerations"]]
        if "tolerations" in place
        else None,
        service_account_name=place.get("serviceAccountName"),
    )


def _runtime_patch(run: str, iteration: int, stage: str, pod_spec: Any) -> Any:
    """Our patch of the runtime's `node` replicated job: the stage's labels and `pod_spec`."""
    from kubeflow_trainer_api import models as m

    node = m.TrainerV1alpha1ReplicatedJobPatch(
        name=RUNTIME_NODE,
        template=m.TrainerV1alpha1JobTemplatePatch(
            # The run label on the JobSet's Jobs: the operator's Job watch sees them change.
            metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels={LABEL_RUN: truncate(run)}),
            spec=m.TrainerV1alpha1JobSpecPatch(
                template=m.TrainerV1alpha1PodTemplatePatch(
                    metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
                        labels=stage_labels(run, iteration, stage)
                    ),
                    spec=pod_spec,
                )
            ),
        ),
    )
    return m.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(
                spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[node])
            )
        ),
    )


def _trainer(spec: AlignmentRunSpec, container: Mapping[str, Any]) -> Any:
    """The TrainJob's trainer: the stage container's image, argv, environment and resources,
    launched by torchrun on every node."""
    from kubeflow_trainer_api import models as m

    gpus = spec.trainer.gpus
    return m.TrainerV1alpha1Trainer(
        image=container["image"],
        # The launcher part of the argv; the stage's arguments follow as `args`.
        command=stage_container.launch_command([], nproc=max(1, gpus), nnodes=spec.trainer.nodes),
        args=list(container["args"]),
        env=[m.IoK8sApiCoreV1EnvVar.from_dict(e) for e in container["env"]],
        num_nodes=spec.trainer.nodes,
        num_proc_per_node=max(1, gpus),
        resources_per_node=m.IoK8sApiCoreV1ResourceRequirements.from_dict(container["resources"]),
    )
