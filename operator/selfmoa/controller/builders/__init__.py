"""Pure builders of the child objects of an AlignmentRun: plain dicts, no API calls.

Every child carries an owner reference to its run (`kopf.adopt`), the run/iteration/stage labels
the executor selects on, a non-root securityContext and resource requests/limits. Names are
deterministic, so a restarted operator finds (and adopts) what it created before instead of
creating a duplicate.

One module per child kind: `jobs` (the stage Job), `serving` (the vLLM Deployment and Service,
with the pod template's spec-hash), `vllm` (the server's containers and arguments), `trainjob`
(the Kubeflow Trainer TrainJob of a multi-node training stage); `common`
holds the names, labels, ownership and security they share.
"""

from __future__ import annotations

from selfmoa.controller.builders.common import (
    ANNOTATION_MODEL,
    GPU,
    LABEL_COMPONENT,
    LABEL_ITERATION,
    LABEL_RUN,
    LABEL_SERVING,
    LABEL_STAGE,
    MAX_NAME,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    WORKER_UID,
    adopt,
    job_name,
    model_slug,
    run_labels,
    serving_name,
    stage_labels,
    storage_env,
    truncate,
)
from selfmoa.controller.builders.jobs import stage_job
from selfmoa.controller.builders.serving import (
    ANNOTATION_SPEC_HASH,
    serving_objects,
    spec_hash,
    spec_hash_of,
)
from selfmoa.controller.builders.trainjob import (
    TRAINER_API_VERSION,
    TRAINER_DISCOVERY_PATH,
    TRAINJOB_PLURAL,
    not_installed_message,
    pod_selector,
    runs_as_trainjob,
    train_job,
    trainjob_name,
)
from selfmoa.controller.builders.vllm import (
    LORA_RANKS,
    MAX_LORAS,
    VLLM_PORT,
    endpoints,
    max_lora_rank,
)

__all__ = [
    "ANNOTATION_MODEL",
    "ANNOTATION_SPEC_HASH",
    "GPU",
    "LABEL_COMPONENT",
    "LABEL_ITERATION",
    "LABEL_RUN",
    "LABEL_SERVING",
    "LABEL_STAGE",
    "LORA_RANKS",
    "MAX_LORAS",
    "MAX_NAME",
    "PRIORITY_LABEL",
    "QUEUE_LABEL",
    "TRAINER_API_VERSION",
    "TRAINER_DISCOVERY_PATH",
    "TRAINJOB_PLURAL",
    "VLLM_PORT",
    "WORKER_UID",
    "adopt",
    "endpoints",
    "job_name",
    "max_lora_rank",
    "model_slug",
    "not_installed_message",
    "pod_selector",
    "run_labels",
    "runs_as_trainjob",
    "serving_name",
    "serving_objects",
    "spec_hash",
    "spec_hash_of",
    "stage_job",
    "stage_labels",
    "storage_env",
    "train_job",
    "trainjob_name",
    "truncate",
]
