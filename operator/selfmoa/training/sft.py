"""Completion-only LoRA SFT in a plain torch loop (the safety reset).

A plain loop rather than TRL's SFTTrainer: the reset is a fixed number of optimizer steps on a
few hundred short examples, and the loop is shorter than the configuration it would replace, has
no dataset preprocessing pass, and starts in milliseconds.

Under torchrun (see `distributed`) the loop is data-parallel: `batch_size` is per process, as
`training.batchSize` says; every rank draws the same global batch of `batch_size * ranks`
examples and trains on its share (DDP, or FSDP2 with `training.strategy: fsdp`). The loss is the
sum of token losses over the *global* batch divided by its token count, so the averaged
gradient, and the adapter, are those of one process training on the whole batch; only rank 0
saves the adapter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from selfmoa.api.spec import LoraSpec
from selfmoa.models.chat import load_tokenizer
from selfmoa.models.threads import cpu_threads_for
from selfmoa.training import distributed as D
from selfmoa.training import model as M

ProgressFn = Callable[[int, int, str], None]


@dataclass
class SFTResult:
    adapter: Path
    examples: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    tokens: int = 0


def _batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled epochs of example indices, cut into batches (an epoch's tail is its own batch)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _global_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """The global batches of one epoch after another, epoch k shuffled with `seed + k`."""
    epoch = 0
    while True:
        yield from _batches(n, batch_size, seed + epoch)
        epoch += 1


@dataclass(frozen=True)
class _Tokenized:
    """The examples as the loop trains on them."""

    #: (input_ids, labels) per example, the prompt masked (-100).
    pairs: list[tuple[list[int], list[int]]]
    #: Tokens the loss counts in each example: labels after the one-token shift, not masked.
    targets: list[int]
    pad: int
    device: torch.device


def _tokenize(
    tok: PreTrainedTokenizerBase,
    examples: Sequence[dict[str, str]],
    max_length: int,
    device: torch.device,
) -> _Tokenized:
    pairs = [M.encode_pair(tok, e["prompt"], e["response"], max_length) for e in examples]
    targets = [sum(1 for y in labels[1:] if y != -100) for _, labels in pairs]
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    return _Tokenized(pairs, targets, pad, device)


def _padded(
    batch: Sequence[tuple[list[int], list[int]]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask) of `batch`, right-padded: positions are then the same
    as in an unpadded forward."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch], device=device)
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=device)
    return ids, labels, mask


def _step(
    wrapped: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch_ids: list[int],
    data: _Tokenized,
    world: D.World,
) -> tuple[float, float]:
    """One optimizer step on this rank's share of a global batch: (the global batch's loss, its
    token count), summed over ranks."""
    mine = batch_ids[world.rank :: world.size]
    # A batch smaller than the world leaves some ranks idle: they still join the gradient
    # reduction, with a zero loss on a stand-in example.
    weight = 1.0 if mine else 0.0
    batch = [data.pairs[i] for i in (mine or batch_ids[:1])]
    ids, labels, mask = _padded(batch, data.pad, data.device)
    # This rank's token losses over the global batch's token count: summed over ranks,
    # the mean over the global batch (the processes average gradients, hence * size).
    n_items = max(sum(data.targets[i] for i in batch_ids), 1)
    loss = (
        weight
        * wrapped(
            input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items
        ).loss
    )
    (loss * world.size).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_loss, step_tokens = D.all_reduce_sum([float(loss.detach()), weight * int(mask.sum())])
    return step_loss, step_tokens


def _save(wrapped: torch.nn.Module, mode: D.Strategy, world: D.World, dest: Path) -> None:
    """Rank 0 saves the trained adapter; under FSDP every rank takes part in gathering it first."""
    state = D.full_state_dict(wrapped, mode)
    if world.is_main:
        inner = D.unwrap(wrapped)
        assert isinstance(inner, PeftModel)
        if state is None:
            M.save_adapter(inner, dest)
        else:
            M.save_adapter(inner, dest, state_dict=state)


def train_sft(
    *,
    base_path: Path,
    parent_adapter: Path | None,
    examples: Sequence[dict[str, str]],
    steps: int,
    learning_rate: float,
    lora: LoraSpec,
    batch_size: int,
    max_length: int,
    seed: int,
    dest: Path,
    progress: ProgressFn | None = None,
    strategy: D.Strategy | None = None,
) -> SFTResult:
    """`steps` AdamW steps of completion-only LM loss on (prompt, response) examples.

    Under a multi-process launch every rank calls this; only rank 0 writes `dest`. `losses` and
    `tokens` are those of the global batches on every rank. `strategy` None: from the
    environment (`distributed.STRATEGY_ENV`), ddp by default.
    """
    if not examples:
        raise ValueError("no examples to train on")
    started = time.monotonic()
    world = D.world()
    with M.quiet():
        tok = load_tokenizer(base_path)
        M.set_seed(seed)
        model = M.load_policy(M.load_base(base_path), parent_adapter, lora)
    with cpu_threads_for(model):
        data = _tokenize(tok, examples, max_length, next(model.parameters()).device)
        mode = strategy or D.strategy()
        wrapped = D.wrap(model, mode, world)
        params = [p for p in wrapped.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        wrapped.train()
        losses: list[float] = []
        tokens = 0
        batches = _global_batches(len(data.pairs), batch_size * world.size, seed)
        for step in range(steps):
            step_loss, step_tokens = _step(wrapped, opt, next(batches), data, world)
            losses.append(step_loss)
            tokens += round(step_tokens)
            if progress is not None:
                progress(step + 1, steps, "safety reset")
        _save(wrapped, mode, world, dest)
    return SFTResult(dest, len(examples), steps, time.monotonic() - started, losses, tokens)
