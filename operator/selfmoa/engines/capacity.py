"""Will the GPUs a run asks for be used? What `selfmoa validate` says before anything runs.

Only what can be known offline: a model's `config.json` when the model is a local folder or
already in the hub's local cache (nothing is downloaded). vLLM splits attention heads evenly
across a tensor-parallel group and refuses to start a server whose group size doesn't divide them
("Total number of attention heads (14) must be divisible by tensor parallel size (4)"): on the
cluster that is minutes and a GPU allocation later, so here it is an error (`gpu_errors`). A
setting that is only wasted, not refused, is a warning (`gpu_warnings`). A stage that loads the
policy into a CPU's memory (a merging export, or any in-process stage of a run without GPUs)
needs at least its weights' bytes under `trainer.resources.memory`, or the kernel kills it
(`memory_errors`, when the weights are on this machine); what a GPU stage needs in host memory
depends on how the loader streams shards, so it gives no guess.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec, ServingEngine
from selfmoa.run import stage_table
from selfmoa.run.stage_models import gpus_for, in_process_models


def local_dir(model: str, revision: str | None = None) -> Path | None:
    """The folder holding the model's config.json on this machine (a folder, or the hub cache's
    snapshot), or None."""
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            cached = try_to_load_from_cache(
                model.removeprefix("hf://").split("@")[0], "config.json", revision=revision
            )
        except ValueError:  # not a hub repo id (a path that doesn't exist, an s3:// URI)
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    return path.parent


def local_config(model: str, revision: str | None = None) -> dict[str, Any] | None:
    """The model's config.json if it is on this machine (a folder, or the hub cache)."""
    folder = local_dir(model, revision)
    if folder is None:
        return None
    try:
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config


def local_weight_bytes(model: str, revision: str | None = None) -> int | None:
    """Bytes of the model's weight files on this machine (safetensors, which transformers
    prefers, else PyTorch .bin), or None when they aren't here."""
    folder = local_dir(model, revision)
    if folder is None:
        return None
    try:
        # A hub cache snapshot holds symlinks to blobs: stat follows them.
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        total = sum(f.stat().st_size for f in files)
    except OSError:
        return None
    return total or None


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes quantity (`16Gi`, `500M`, `1e9`) as a number, read by the Kubernetes client's
    own parser (imported here, only when a limit is compared: ~0.3 s)."""
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(quantity))  # type: ignore[no-untyped-call]


def memory_errors(spec: AlignmentRunSpec) -> list[str]:
    """One line when a stage that loads the policy into a CPU's memory would get less memory
    than the policy's weights take on disk (their bytes are a floor: merging or CPU training
    copies them out of the file, in their stored dtype or wider)."""
    limit = spec.trainer.resources.memory
    if limit is None:
        return []
    weights = local_weight_bytes(spec.policy.model, spec.policy.revision)
    if weights is None or weights <= quantity_bytes(limit):
        return []
    # The stages the run has (the reset only when enabled, the export with an output; iterations
    # 0 and 1 hold every kind), in the table's order.
    has = {
        name
        for _, name in stage_table.stages_of_run(
            1, reset=spec.safety_reset.enabled, export=spec.output is not None
        )
    }
    for stage in (s.name for s in stage_table.STAGES if s.name in has):
        if spec.policy.model not in in_process_models(spec, stage):
            continue
        # Without a GPU (always so for the export, which merges on the CPU).
        if gpus_for(spec, stage) == 0:
            why = "merges it (output.merge)" if stage == "export" else "loads it"
            return [
                f"trainer.resources.memory: {limit} is less than the {weights / 2**30:.1f} GiB "
                f"of {spec.policy.model}'s weights, which stage {stage} {why} on a CPU; the "
                f"kernel would kill the Pod (give it at least {math.ceil(weights / 2**30)}Gi)"
            ]
    return []


def gpu_errors(spec: AlignmentRunSpec) -> list[str]:
    """One line per served model whose readable config vLLM would refuse at this tensor-parallel
    size (models whose config isn't on this machine give no guess)."""
    out: list[str] = []
    tp = spec.serving.gpus_per_model
    if spec.serving.engine == ServingEngine.vllm and tp > 1:
        for model in spec.models():
            config = local_config(
                model, spec.policy.revision if model == spec.policy.model else None
            )
            if config is None:
                continue
            heads = config.get("num_attention_heads")
            if isinstance(heads, int) and heads % tp:
                out.append(
                    f"serving.gpusPerModel: {tp} doesn't divide the {heads} attention heads of "
                    f"{model}; vLLM refuses to start it (use a divisor of {heads})"
                )
    return out


def gpu_warnings(spec: AlignmentRunSpec) -> list[str]:
    """One line per requested GPU setting that is wasted, though nothing refuses it."""
    out: list[str] = []
    tp = spec.serving.gpus_per_model
    if spec.serving.engine != ServingEngine.vllm and tp > 1:
        out.append(
            "serving.gpusPerModel: only vLLM servers use it; in-process engines run on one GPU"
        )
    return out
