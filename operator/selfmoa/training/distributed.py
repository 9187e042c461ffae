"""Training under a multi-process launch (torchrun): who this process is, and how to launch.

A train or reset Job with `trainer.gpus > 1` runs the stage under `torchrun`, one process per
GPU; torchrun sets RANK / WORLD_SIZE / LOCAL_RANK. Every rank trains (DDP replicates the model,
FSDP shards it) and only rank 0 writes: the adapter, the stage's files and, after a barrier that
every rank must reach, the manifest. torchrun runs with `--max-restarts 0`, so one dead rank
fails the whole launch before any manifest exists, and the Job's retry redoes the stage.

Why torchrun rather than `accelerate launch`: it ships with torch (no launcher config file), the
DDP/FSDP settings already live in our code (TRL's `DPOConfig` for the train stage, a plain loop
for the reset), and Kubeflow Trainer's torch runtime drives multi-node jobs through torchrun's own
`PET_*` environment variables, so one command covers one node and many.

The module imports no torch at import time: `launch_command` is pure, and the stage base calls
`world()` / `barrier()` for every stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from selfmoa.api import stage_container

if TYPE_CHECKING:
    import torch

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("ddp", "fsdp")
#: The training strategy when the spec has no `training.strategy` (the operator sets it on the
#: Job): `ddp` (default; every rank holds the whole model) or `fsdp` (parameters sharded).
STRATEGY_ENV: Final = "SELFMOA_TRAIN_STRATEGY"
# The launch argv lives in the operator-container interface (the operator writes it).
LAUNCHER = stage_container.LAUNCHER
CLI_MODULE = stage_container.CLI_MODULE
launch_command = stage_container.launch_command


class DistributedError(ValueError):
    """A launch environment or strategy that can't work: one clear line."""


@dataclass(frozen=True)
class World:
    """This process's place in the launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(environ: Mapping[str, str] = os.environ) -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""

    def num(name: str, default: int) -> int:
        raw = environ.get(name, "")
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise DistributedError(f"{name}={raw!r}: not an integer") from None

    w = World(rank=num("RANK", 0), size=num("WORLD_SIZE", 1), local_rank=num("LOCAL_RANK", 0))
    if w.size < 1 or not 0 <= w.rank < w.size or w.local_rank < 0:
        raise DistributedError(f"RANK={w.rank} WORLD_SIZE={w.size}: not a valid launch")
    return w


def strategy(training: object | None = None, environ: Mapping[str, str] = os.environ) -> Strategy:
    """`training.strategy` when the spec has it, else `$SELFMOA_TRAIN_STRATEGY`, else `ddp`."""
    value = getattr(training, "strategy", None) if training is not None else None
    raw = str(getattr(value, "value", value) or environ.get(STRATEGY_ENV, "") or "ddp").lower()
    if raw not in STRATEGIES:
        raise DistributedError(
            f"training strategy {raw!r}: use one of {', '.join(STRATEGIES)} ({STRATEGY_ENV})"
        )
    return raw


# ------------------------------------------------------------------ inside a launch (torch)

#: Set by `use_device("cpu")`: train on the CPU even when a GPU is visible (serving.device: cpu).
_cpu_only = False


def use_device(device: str) -> None:
    """The device this process trains on, as the engine provider resolved `serving.device`
    ("cpu" or "cuda"); called by the training stages before any model is loaded."""
    global _cpu_only
    _cpu_only = device == "cpu"


def on_cuda() -> bool:
    """Whether training runs on CUDA: a GPU is visible and the spec doesn't ask for the CPU."""
    import torch

    return not _cpu_only and torch.cuda.is_available()


def backend() -> str:
    """nccl on GPUs, gloo on CPU."""
    return "nccl" if on_cuda() else "gloo"


def init_process_group(w: World | None = None) -> None:
    """Join the launch's process group (once; accelerate may have done it already)."""
    import torch
    import torch.distributed as dist

    w = w or world()
    if not w.distributed or dist.is_initialized():
        return
    if on_cuda():
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend=backend())


def barrier() -> None:
    """Wait for every rank (no-op without a launch). A dead rank makes this raise on the others."""
    w = world()
    if not w.distributed:
        return
    import torch.distributed as dist

    init_process_group(w)
    dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over ranks, in one collective (the values themselves without a launch)."""
    import torch
    import torch.distributed as dist

    if not world().distributed:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else None
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def layer_classes(model: Any) -> list[str]:
    """Class names of the model's repeated blocks (Qwen2: `Qwen2DecoderLayer`): FSDP's units."""
    inner = model
    # A PeftModel: the transformers model is two levels down.
    for attr in ("base_model", "model"):
        if not getattr(inner, "_no_split_modules", None):
            inner = getattr(inner, attr, inner)
    names = list(getattr(inner, "_no_split_modules", None) or [])
    if not names:
        raise DistributedError(
            f"fsdp: {type(inner).__name__} declares no decoder layer class to shard by"
        )
    return names


def fsdp_config(model: Any) -> dict[str, Any]:
    """transformers' `fsdp_config`: FSDP2, one shard unit per decoder layer, full adapter saves."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": layer_classes(model),
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
    }


def wrap(model: torch.nn.Module, mode: Strategy, w: World | None = None) -> torch.nn.Module:
    """The model as the plain training loop (the reset) trains it: DDP, FSDP2, or as is."""
    from torch.nn.parallel import DistributedDataParallel

    w = w or world()
    # One process: nothing to replicate or shard, whatever the strategy.
    if not w.distributed:
        return model
    init_process_group(w)
    cuda = on_cuda()
    if mode == "ddp":
        # Every LoRA weight takes part in every forward: no search for unused parameters.
        return DistributedDataParallel(
            model, device_ids=[w.local_rank] if cuda else None, find_unused_parameters=False
        )
    from torch.distributed.fsdp import fully_shard

    names = set(layer_classes(model))
    for module in list(model.modules()):
        if type(module).__name__ in names:
            fully_shard(module)
    fully_shard(model)
    return model


def full_state_dict(wrapped: torch.nn.Module, mode: Strategy) -> dict[str, Any] | None:
    """FSDP: the gathered full state dict (a collective: every rank calls it; rank 0 gets it).
    DDP and single process: None (the unwrapped model's own state is whole)."""
    if mode != "fsdp" or not world().distributed:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return dict(
        get_model_state_dict(
            wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    )


def unwrap(wrapped: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (FSDP2 shards in place: the module is itself)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel):
        inner: torch.nn.Module = wrapped.module
        return inner
    return wrapped
