"""The operator's own configuration (`/etc/selfmoa/config.yaml`, rendered by the Helm chart).

camelCase keys, like the chart's values; every key optional. Resource dicts are Kubernetes
ResourceRequirements as-is (`{"requests": {...}, "limits": {...}}`): the operator merges the
spec's requests and GPU counts on top of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from selfmoa.api.loader import describe
from selfmoa.api.spec import StorageSpec

DEFAULT_CONFIG_PATH = "/etc/selfmoa/config.yaml"
#: Pinned upstream vLLM image: a moving `latest` would change servers under a running run.
DEFAULT_SERVING_IMAGE = "vllm/vllm-openai:v0.10.1.1"
DEFAULT_WORKER_IMAGE = "ghcr.io/selfmoa/worker:0.1.0"


#: The ClusterTrainingRuntime Kubeflow Trainer installs for torchrun jobs.
DEFAULT_TRAINING_RUNTIME = "torch-distributed"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    worker_image: str = Field(default=DEFAULT_WORKER_IMAGE, description="Image of stage Jobs.")
    serving_image: str = Field(default=DEFAULT_SERVING_IMAGE, description="vLLM image.")
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    stage_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": "8Gi"},
        }
    )
    train_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "2", "memory": "8Gi"},
            "limits": {"memory": "32Gi"},
        }
    )
    serving_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "2", "memory": "16Gi"},
            "limits": {"memory": "32Gi"},
        }
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    job_ttl_seconds_after_finished: int | None = Field(default=86400, ge=0)
    service_account_name: str | None = Field(default=None, description="For stage pods.")
    storage: StorageSpec | None = Field(
        default=None, description="Storage for runs that leave spec.storage unset."
    )
    shared_file_storage: bool = Field(
        default=False,
        description=(
            "Whether a file:// store is one directory every stage Pod sees (only where Pods "
            "share the operator's filesystem, as a test harness's do). Off: a run whose store is "
            "file:// fails at once, since each Pod would write into its own container."
        ),
    )
    training_runtime: str = Field(
        default=DEFAULT_TRAINING_RUNTIME,
        min_length=1,
        description="Kubeflow Trainer ClusterTrainingRuntime of multi-node (TrainJob) stages.",
    )


def load_config(path: str | Path | None) -> OperatorConfig:
    """The config at `path`; the default path when it exists; else the defaults."""
    if path is None:
        p = Path(DEFAULT_CONFIG_PATH)
        if not p.exists():
            return OperatorConfig()
    else:
        p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ValueError(f"{p}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a mapping")
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{p}: {describe(e)}") from None
