"""Where a run lives and runs: the artifact store, model serving and the stage Jobs."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from selfmoa.api.base import (
    DNS1123_SUBDOMAIN_PATTERN,
    MAX_DEADLINE_SECONDS,
    STORAGE_URI_PATTERN,
    Bool,
    Int,
    Model,
    NonBlank,
    Quantity,
    SecretName,
    Url,
)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")


def bucket_problem(bucket: str) -> str | None:
    """Why S3 would refuse `bucket` as a bucket name (one line), or None."""
    if not bucket:
        return "no bucket name (expected s3://BUCKET/PREFIX)"
    if _BUCKET.fullmatch(bucket) is None:
        return (
            f"bucket {bucket[:70]!r}: S3 bucket names are 3 to 63 lowercase letters, digits, '.' "
            "and '-', starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return f"bucket {bucket!r}: S3 bucket names can't hold '..', '.-' or '-.'"
    if _IP_LIKE.fullmatch(bucket):
        return f"bucket {bucket!r}: S3 bucket names can't look like an IP address"
    return None


class StorageSpec(Model):
    """Where every artifact goes."""

    uri: str = Field(
        default="file://./runs",
        description="file://PATH or s3://BUCKET/PREFIX; artifacts go under <uri>/<namespace>/<run>/.",
        pattern=STORAGE_URI_PATTERN,
    )
    endpoint: Url | None = Field(default=None, description="S3 endpoint URL (MinIO and others).")
    region: str | None = Field(default=None, min_length=1, description="S3 region.")
    secret_ref: SecretName | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (operator only).",
    )

    @field_validator("uri")
    @classmethod
    def _bucket(cls, uri: str) -> str:
        if uri.startswith("s3://"):
            problem = bucket_problem(uri.removeprefix("s3://").partition("/")[0])
            if problem:
                raise ValueError(problem)
        return uri

    timeout_seconds: Int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description=(
            "S3: how long one store operation may wait on an endpoint that stopped answering, "
            "retries included, before the stage fails (default 60, or the "
            "SELFMOA_STORE_TIMEOUT_SECONDS environment variable)."
        ),
    )


class ServingEngine(StrEnum):
    vllm = "vllm"
    transformers = "transformers"
    openai = "openai"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ServingSpec(Model):
    """How models are served to the stages."""

    engine: ServingEngine = Field(
        default=ServingEngine.transformers,
        description=(
            "transformers: stages load models in-process (CPU, small clusters); vllm: the "
            "operator runs a vLLM server per model; openai: use the endpoints given below."
        ),
    )
    endpoints: dict[str, Url] = Field(
        default_factory=dict,
        description="openai engine: model id -> base URL of an OpenAI-compatible server.",
    )
    image: NonBlank | None = Field(
        default=None, description="Serving image (default from the operator)."
    )
    device: Device = Field(
        default=Device.auto,
        description=(
            "In-process engines and training: auto (CUDA when present, else CPU), cpu, or cuda "
            "(an error when no GPU is visible)."
        ),
    )
    gpus_per_model: Int = Field(
        default=1,
        ge=0,
        le=8,
        description=(
            "GPUs per vLLM server: its tensor-parallel size (0, or a power of two up to 8, "
            "the GPUs of one node)."
        ),
    )
    replicas: Int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "vLLM servers per model behind its Service; generation spreads over them and every "
            "replica loads every adapter it must serve."
        ),
    )
    release_during_training: Bool = Field(
        default=True, description="Scale serving to zero while the train Job runs."
    )
    max_concurrency: Int = Field(
        default=64, ge=1, le=4096, description="Requests in flight per server (lets vLLM batch)."
    )
    batch_size: Int = Field(
        default=32,
        ge=1,
        le=4096,
        description=(
            "transformers engine: sequences generated together in one batch (a prompt's samples "
            "count once each). Larger batches use more memory and are faster while the model's "
            "per-step overhead, not its arithmetic, dominates (a tiny model on a CPU). Changing "
            "it changes which samples a seed draws."
        ),
    )
    hf_token_secret_ref: SecretName | None = Field(
        default=None, description="Secret with HF_TOKEN for gated hub models."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments.")

    @field_validator("extra_args")
    @classmethod
    def _max_model_len_is_a_number(cls, args: list[str]) -> list[str]:
        ServingSpec.model_construct(extra_args=args).max_model_len()
        return args

    def max_model_len(self) -> int | None:
        """vLLM's `--max-model-len` from `extraArgs` (None: not given, the model's own)."""
        args = self.extra_args
        for i, arg in enumerate(args):
            flag, eq, value = arg.partition("=")
            if flag != "--max-model-len":
                continue
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"--max-model-len {value!r} is not a number of tokens") from None
        return None

    @field_validator("gpus_per_model")
    @classmethod
    def _tensor_parallel(cls, n: int) -> int:
        if n & (n - 1):
            raise ValueError(
                f"{n} GPUs can't be one vLLM tensor-parallel group: use 1, 2, 4 or 8 (vLLM "
                "splits attention heads evenly across a power of two)"
            )
        return n


class ResourcesSpec(Model):
    cpu: Quantity | None = Field(default=None, description="CPU request, e.g. '4' or '500m'.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit, e.g. '16Gi'."
    )


class TrainerSpec(Model):
    """Where stage Jobs run (the worker image)."""

    image: NonBlank | None = Field(
        default=None, description="Worker image (default from the operator)."
    )
    gpus: Int = Field(
        default=1,
        ge=0,
        le=16,
        description=(
            "GPUs per node for the train and reset Jobs; more than 1 launches one training "
            "process per GPU (torchrun)."
        ),
    )
    nodes: Int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Nodes for the train and reset stages; more than 1 runs them as a Kubeflow Trainer "
            "TrainJob (the cluster must serve trainer.kubeflow.org)."
        ),
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description=(
            "Resources of the stages that load a model: train and reset, and any stage that "
            "loads one in its own process; the others keep the operator's stage resources."
        ),
    )
    backoff_limit: Int = Field(default=2, ge=0, le=20, description="Retries of a failed stage Job.")
    active_deadline_seconds: Int = Field(
        default=6 * 3600,
        ge=60,
        le=MAX_DEADLINE_SECONDS,
        description="Deadline of one stage Job, in seconds (at most 7 days).",
    )


#: A Kubernetes volume subPath: relative, no `..` element (RE2-compatible, for the CRD too).
_SUB_PATH_ELEMENT = (
    r"([A-Za-z0-9_-][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+)"
)
SUB_PATH_PATTERN = rf"^{_SUB_PATH_ELEMENT}(/{_SUB_PATH_ELEMENT})*$"

ClaimName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN)
]


class ModelCacheSpec(Model):
    """A shared, pre-seeded cache of hub models: a PersistentVolumeClaim every pod reads."""

    pvc: ClaimName = Field(
        description=(
            "PersistentVolumeClaim holding the models (ReadOnlyMany or ReadWriteMany), mounted "
            "read-only by every stage and vLLM pod that loads a hub model. Hub models are read "
            "from it and never downloaded: seed it first with `selfmoa fetch "
            "--hub ORG/NAME --revision REV DIR` (manifests/examples/model-cache-seed.yaml)."
        )
    )
    sub_path: str | None = Field(
        default=None,
        max_length=1024,
        description="Directory inside the volume that holds the cache (default: its root).",
        json_schema_extra={"pattern": SUB_PATH_PATTERN},
    )

    @field_validator("sub_path")
    @classmethod
    def _relative(cls, sub_path: str | None) -> str | None:
        if sub_path is not None and not re.match(SUB_PATH_PATTERN, sub_path):
            raise ValueError(
                f"{sub_path!r} must be a relative path inside the volume: no leading '/', "
                "no '..', no empty element"
            )
        return sub_path


class OutputSpec(Model):
    """Where the run's result goes when it ends (the operator runs `selfmoa export` as a Job)."""

    uri: NonBlank = Field(
        description=(
            "s3://BUCKET/PREFIX (or a file:// path on shared storage), this run's own: an "
            "existing export there is replaced."
        )
    )
    merge: Bool = Field(
        default=False,
        description="Write the full model with the adapter merged in, instead of the adapter.",
    )
