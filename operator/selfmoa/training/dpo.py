"""Preference optimization with TRL's DPOTrainer and a PEFT LoRA adapter.

The reference model is the policy *at the start of the iteration*:
- parent = base model: a fresh LoRA goes in through `peft_config`; TRL computes the reference
  with the adapter disabled (= the base).
- parent = an adapter: we load it as a trainable PeftModel and pass no `peft_config`; TRL then
  adds a frozen copy named "ref" and computes the reference through it.
In both cases the reference log-probs are precomputed over the whole dataset before the first
optimizer step (`precompute_ref_log_probs=True`), so they are the starting policy's by
construction, and cost one forward per pair instead of one per pair per epoch. Saving keeps
only the "default" adapter, so TRL's "ref" copy never reaches the store.

`dpo` and `weighted` train on TRL's own losses, `bfpo` and `modpo` on the papers' losses: the
trainers are in `dpo_trainers`. With `training.openingAnchor.weight` > 0 the trainer adds the
opening anchor (`opening_anchor`) to either; at weight 0 it is the plain trainer, on the same
dataset.

Under torchrun (see `distributed`) accelerate runs the trainer as DDP (gloo on CPU, nccl on GPUs)
or FSDP2 (`training.strategy: fsdp`), `batchSize` per process; every rank trains and only rank 0
saves the adapter. The precomputed reference log-probs are kept in memory on every rank
(`dpo_trainers.InMemoryRefDPOTrainer`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import (
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from transformers.training_args import TrainingArguments
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer

from selfmoa.api.spec import TrainingSpec
from selfmoa.models.chat import has_chat_template, load_tokenizer
from selfmoa.models.threads import cpu_threads_for
from selfmoa.training import distributed as D
from selfmoa.training import model as M
from selfmoa.training.dpo_trainers import (
    AnchoredMultiObjectiveDPOTrainer,
    InMemoryRefDPOTrainer,
    MultiObjectiveDPOTrainer,
    OpeningAnchorDPOTrainer,
)
from selfmoa.training.objectives import Row, own_loss, trl_loss

ProgressFn = Callable[[int, int, str], None]


class _Progress(TrainerCallback):
    def __init__(self, progress: ProgressFn, label: str) -> None:
        self.progress = progress
        self.label = label

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.progress(0, state.max_steps, self.label)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.progress(state.global_step, state.max_steps, self.label)


@dataclass
class DPOResult:
    adapter: Path
    pairs: int
    tokens: int
    steps: int
    seconds: float
    final_loss: float | None
    reward_accuracy: float | None
    #: One entry per optimizer step: {"step", "loss", and whatever TRL logged}.
    log: list[dict[str, float]] = field(default_factory=list)
    #: Whether training continued an existing adapter (vs a fresh LoRA on the base).
    continued: bool = False
    #: Pairs left out because their prompt alone fills `max_length`.
    dropped: int = 0


def dataset_rows(
    rows: Sequence[Row], tok: PreTrainedTokenizerBase, *, fair: bool = False
) -> list[dict[str, Any]]:
    """TRL's conversational preference format when the tokenizer has a chat template (so the
    prompt is rendered exactly as the engines render it), the plain-text format otherwise; plus
    the loss's per-pair columns, and with `fair` the rows' fair flags (for the opening anchor)."""
    chat = has_chat_template(tok)
    out: list[dict[str, Any]] = []
    for r in rows:
        if chat:
            row: dict[str, Any] = {
                "prompt": [{"role": "user", "content": r.prompt}],
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
        else:
            row = {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
        out.append(row | r.columns(fair=fair))
    return out


def dpo_config(
    training: TrainingSpec,
    output_dir: Path,
    n_rows: int,
    *,
    fsdp: dict[str, Any] | None = None,
) -> DPOConfig:
    """TRL's configuration for this process: under torchrun the pairs are split over the ranks,
    and `fsdp` (a `distributed.fsdp_config`) turns FSDP on instead of DDP."""
    loss_type, loss_weights = trl_loss(training)
    cpu = M.use_cpu()
    w = D.world()
    per_device_rows = max(math.ceil(n_rows / w.size), 1)
    multi = parallel_args(w, cpu=cpu, fsdp=fsdp)
    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=min(training.batch_size, per_device_rows),
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_train_epochs=training.epochs,
        learning_rate=training.learning_rate,
        beta=training.resolved_beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        max_length=training.max_length,
        precompute_ref_log_probs=True,
        seed=training.seed,
        data_seed=training.seed,
        # CPU: bf16 and gradient checkpointing cost 1.4-3x per step (measured on the tiny model).
        use_cpu=cpu,
        bf16=M._use_bf16(),
        activation_checkpointing=not cpu and not multi.get("fsdp"),
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        remove_unused_columns=True,
        **multi,
    )


def parallel_args(w: D.World, *, cpu: bool, fsdp: dict[str, Any] | None) -> dict[str, Any]:
    """The `DPOConfig` arguments of a multi-process launch (none for one process)."""
    if not w.distributed:
        return {}
    out: dict[str, Any] = {
        "ddp_backend": "gloo" if cpu else "nccl",
        # Every LoRA weight takes part in every forward: no search for unused parameters.
        "ddp_find_unused_parameters": False,
    }
    if fsdp is not None:
        # FSDP checkpoints activations itself; the trainer's own flag would add an all-gather.
        out |= {"fsdp": True, "fsdp_config": {**fsdp, "activation_checkpointing": not cpu}}
    return out


@contextlib.contextmanager
def scored_completions_only() -> Iterator[None]:
    """Make TRL score only the completion tokens on the CPU too.

    TRL's fused LM head computes log-probabilities over the whole vocabulary in chunks, and on
    devices without Triton it scores every position, prompt and padding included (to keep tile
    shapes fixed for compilers such as Neuron's), then masks them out. With a 49k vocabulary and
    prompts longer than their answers, that was most of a CPU step: SmolLM2-135M, 4 DPO steps of
    8 pairs, 100 s as shipped, 51 s scoring completions only (profiled; the losses are the same
    sums). TRL picks the mode with `trl.trainer.utils._use_triton`; on a CPU it is told yes for
    that choice alone (the kernel itself checks for Triton in its own module and stays on torch).
    A TRL without that name is left alone.
    """
    from trl.trainer import utils as trl_utils

    original: Callable[[torch.device], bool] | None = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or bool(original(device))

    setattr(trl_utils, "_use_triton", compact)  # noqa: B010 - a private name, on purpose
    try:
        yield
    finally:
        setattr(trl_utils, "_use_triton", original)  # noqa: B010


def train_dpo(
    *,
    base_path: Path,
    parent_adapter: Path | None,
    rows: Sequence[Row],
    training: TrainingSpec,
    workdir: Path,
    dest: Path,
    progress: ProgressFn | None = None,
    label: str = "training",
) -> DPOResult:
    """Train on `rows` from `parent_adapter` (None: the base) and save the adapter to `dest`.

    Under a multi-process launch every rank calls this; only rank 0 writes `dest`.
    """
    started = time.monotonic()
    world = D.world()
    mode = D.strategy(training)
    if mode == "fsdp" and world.distributed and M.use_cpu():
        # accelerate shards only on GPUs and would quietly run DDP instead.
        raise D.DistributedError(
            "training.strategy fsdp needs GPUs: the DPO trainer (accelerate) shards only on CUDA "
            "devices; use ddp on CPU"
        )
    with M.quiet():
        tok = load_tokenizer(base_path)
        M.set_seed(training.seed)  # the fresh LoRA's init draws from it
        base = M.load_base(base_path)
        # TRL drops pairs whose prompt alone fills max_length (no completion token left) and
        # crashes when that leaves none: drop them here, count them, and train on the rest.
        kept = [r for r in rows if _prompt_tokens(tok, r.prompt) < training.max_length]
        dropped = len(rows) - len(kept)
        with cpu_threads_for(base), scored_completions_only():
            if not kept:
                return _untrained(base, parent_adapter, training, dest, started, dropped, world)
            fsdp = D.fsdp_config(base) if mode == "fsdp" and world.distributed else None
            trainer = _trainer(base, parent_adapter, kept, tok, training, workdir, fsdp)
            tokens = _count_tokens(trainer.train_dataset)
            if progress is not None:
                trainer.add_callback(_Progress(progress, label))
            trainer.train()
            _save(trainer, dest, world)

    log = [_step_entry(e) for e in trainer.state.log_history if "loss" in e]
    acc = [e["rewards/accuracies"] for e in log if "rewards/accuracies" in e]
    return DPOResult(
        adapter=dest,
        pairs=len(kept),
        tokens=tokens,
        steps=int(trainer.state.global_step),
        seconds=time.monotonic() - started,
        final_loss=log[-1]["loss"] if log else None,
        reward_accuracy=acc[-1] if acc else None,
        log=log,
        continued=parent_adapter is not None,
        dropped=dropped,
    )


def _save(trainer: DPOTrainer, dest: Path, world: D.World) -> None:
    """Rank 0 saves the trained adapter. Under FSDP every rank takes part in gathering it first."""
    state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if not world.is_main:
        return
    trained = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(trained, PeftModel)
    if state is None:
        M.save_adapter(trained, dest)
    else:
        M.save_adapter(trained, dest, state_dict=state)


def _prompt_tokens(tok: PreTrainedTokenizerBase, prompt: str) -> int:
    return len(tok(M.prompt_text(tok, prompt), add_special_tokens=False)["input_ids"])


def _trainer(
    base: Any,
    parent_adapter: Path | None,
    rows: Sequence[Row],
    tok: PreTrainedTokenizerBase,
    training: TrainingSpec,
    workdir: Path,
    fsdp: dict[str, Any] | None = None,
) -> DPOTrainer:
    """The configured trainer; constructing it tokenizes and precomputes the reference."""
    anchor = training.anchor
    data = Dataset.from_list(dataset_rows(rows, tok, fair=anchor is not None))
    args = dpo_config(training, workdir, len(rows), fsdp=fsdp)

    def make(**kw: Any) -> DPOTrainer:
        kw |= {"args": args, "train_dataset": data, "processing_class": tok}
        if own_loss(training):
            kw["loss_kind"] = training.loss
        if anchor is not None:
            kw["anchor"] = anchor
        return trainer_class(training)(**kw)

    if parent_adapter is None:
        trainer = make(model=base, peft_config=M.lora_config(training.lora, base))
    else:
        # A PeftModel without peft_config: TRL adds the frozen "ref" copy of the parent.
        trainer = make(model=M.load_policy(base, parent_adapter, training.lora))
    # disable_tqdm makes the Trainer print every log dict instead: the log goes to train_log.json.
    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_class(training: TrainingSpec) -> type[DPOTrainer]:
    """TRL's losses (dpo, weighted) or the papers' (bfpo, modpo); with the opening anchor on,
    the same plus the anchor."""
    own = own_loss(training)
    if training.anchor is not None:
        return AnchoredMultiObjectiveDPOTrainer if own else OpeningAnchorDPOTrainer
    return MultiObjectiveDPOTrainer if own else InMemoryRefDPOTrainer


def _untrained(
    base: Any,
    parent_adapter: Path | None,
    training: TrainingSpec,
    dest: Path,
    started: float,
    dropped: int,
    world: D.World,
) -> DPOResult:
    """Zero pairs: the parent's adapter as is, or a fresh LoRA (B = 0: the base's outputs)."""
    if world.is_main and parent_adapter is not None:
        M.copy_adapter(parent_adapter, dest)
    elif world.is_main:
        M.save_adapter(M.load_policy(base, None, training.lora), dest)
    return DPOResult(
        adapter=dest,
        pairs=0,
        tokens=0,
        steps=0,
        seconds=time.monotonic() - started,
        final_loss=None,
        reward_accuracy=None,
        continued=parent_adapter is not None,
        dropped=dropped,
    )


def _count_tokens(ds: Any) -> int:
    cols = ("prompt_ids", "chosen_ids", "rejected_ids")
    return sum(len(ex[c]) for ex in ds.select_columns(list(cols)) for c in cols)


def _step_entry(entry: dict[str, Any]) -> dict[str, float]:
    keep = (
        "loss",
        "learning_rate",
        "grad_norm",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "opening_kl",
        "epoch",
    )
    out = {"step": float(entry.get("step", 0))}
    for k in keep:
        v = entry.get(k)
        if isinstance(v, int | float) and math.isfinite(float(v)):
            out[k] = float(v)
    return out
