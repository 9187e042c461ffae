"""The contract between the operator and the worker container, in one leaf module.

The operator's child builders write a stage Job's command, arguments, environment and mounts from
these definitions; `selfmoa stage` (the stage runner) reads them back from here. Neither side
spells an env name or a flag on its own, and a round-trip test checks that what the builders
write is what the runner reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: The run's spec (JSON of `AlignmentRunSpec.wire()`), so a Job needs no other source.
SPEC_ENV: Final = "SELFMOA_SPEC"
#: Model id -> base URL of its OpenAI-compatible server (JSON), for `serving.engine: vllm`.
ENDPOINTS_ENV: Final = "SELFMOA_ENDPOINTS"
#: Where models are built or downloaded once and reused (default `~/.cache/selfmoa`).
CACHE_ENV: Final = "SELFMOA_CACHE"
#: Where a failed stage writes its one-line reason (Kubernetes shows it as the termination message).
TERMINATION_LOG_ENV: Final = "SELFMOA_TERMINATION_LOG"
TERMINATION_LOG: Final = "/dev/termination-log"
#: The AWS variables a storage Secret must hold (read by boto3 in the container).
STORAGE_SECRET_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

#: The stage container's writable scratch volume: its HOME and its model cache live there.
WORK_VOLUME: Final = "work"
WORK_DIR: Final = "/work"
CACHE_DIR: Final = f"{WORK_DIR}/cache"

#: `spec.modelCache`: the shared, pre-seeded model cache volume (a PVC), mounted read-only by
#: every stage and serving pod that loads a hub model. Its layout is the model cache's own
#: (`models/<key>/` with the complete-marker, see `selfmoa.store.model_cache`).
MODEL_CACHE_VOLUME: Final = "model-cache"
MODEL_CACHE_DIR: Final = "/model-cache"
#: Where that volume is mounted: hub models are read from there, never downloaded.
MODEL_CACHE_ENV: Final = "SELFMOA_MODEL_CACHE"
#: The model fetch (and pre-seed, and presence check) in the worker image.

#: The worker image's entry point.
COMMAND: Final = ("selfmoa",)
#: Model fetches (the vLLM init containers, seeding a model cache volume).
FETCH_COMMAND: Final = (*COMMAND, "fetch")
#: More than one training process: the launcher, and the module it runs in every process.
LAUNCHER: Final = "torchrun"
CLI_MODULE: Final = "selfmoa.cli"


@dataclass(frozen=True)
class StageCall:
    """One stage of one iteration of one run: what a Job asks `selfmoa stage` to do."""

    stage: str
    run_uri: str
    iteration: int
    #: The iteration whose adapter the stage starts from (None: the runner works it out).
    parent: int | None = None

    def args(self) -> list[str]:
        """The arguments after `selfmoa`."""
        out = ["stage", self.stage, "--run-uri", self.run_uri, "--iteration", str(self.iteration)]
        if self.parent is not None:
            out += ["--parent", str(self.parent)]
        return out


def stage_env(
    spec_wire: Mapping[str, Any], endpoints: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The literal environment of a stage container (Secrets are referenced by the builders)."""
    env = {
        SPEC_ENV: json.dumps(dict(spec_wire), sort_keys=True),
        "HOME": WORK_DIR,
        CACHE_ENV: CACHE_DIR,
    }
    if endpoints:
        env[ENDPOINTS_ENV] = json.dumps(dict(endpoints), sort_keys=True)
    return env


def spec_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The spec a Job was given (raises `json.JSONDecodeError` on a malformed value)."""
    raw = environ.get(SPEC_ENV)
    if not raw:
        return None
    obj: dict[str, Any] = json.loads(raw)
    return obj


def endpoints_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    raw = environ.get(ENDPOINTS_ENV, "")
    return dict(json.loads(raw)) if raw else {}


def termination_log_path(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG)


def write_termination_message(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Kubernetes shows this file's content as the container's termination message (what the
    run's condition quotes); outside a pod, where its directory doesn't exist, nothing."""
    path = Path(termination_log_path(environ))
    try:
        if path.parent.is_dir() and (path.exists() or os.access(path.parent, os.W_OK)):
            path.write_text(message[:4000])
    except OSError:
        pass


def launch_command(
    args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """The container argv that runs `selfmoa ARGS` in `nproc` processes on each of `nnodes` nodes.

    One process: `selfmoa ARGS` unchanged. One node: `torchrun --standalone` (a private
    rendezvous on localhost). Several nodes: static rendezvous from `rdzv_endpoint`, or from the
    `PET_MASTER_ADDR` / `PET_MASTER_PORT` / `PET_NODE_RANK` variables that Kubeflow Trainer's torch
    runtime sets when `rdzv_endpoint` is None. `--max-restarts 0`: a failed rank fails the launch,
    and the Job's own retry redoes the stage.
    """
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"launch: nproc={nproc} nnodes={nnodes}: both must be at least 1")
    if nproc == 1 and nnodes == 1:
        return [*COMMAND, *args]
    cmd = [LAUNCHER, "--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if nnodes == 1:
        cmd.append("--standalone")
    elif rdzv_endpoint is not None:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        if rdzv_id is not None:
            cmd += ["--rdzv-id", rdzv_id]
    return [*cmd, "-m", CLI_MODULE, *args]
