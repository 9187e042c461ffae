"""Will the GPUs a run asks for be used? What `selfmoa validate` says before anything runs.

Only what can be known offline: a model's `config.json` when the model is a local folder or
already in the hub's local cache (nothing is downloaded). vLLM splits attention heads evenly
across a tensor-parallel group and refuses to start a server whose group size doesn't divide them
("Total number of attention heads (14) must be divisible by tensor parallel size (4)"): on the
cluster that is minutes and a GPU allocation later, so here it is an error (`gpu_errors`). A
setting that is only wasted, not refused, is a warning (`gpu_warnings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec, ServingEngine


def local_config(model: str, revision: str | None = None) -> dict[str, Any] | None:
    """The model's config.json if it is on this machine (a folder, or the hub cache)."""
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
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config


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
