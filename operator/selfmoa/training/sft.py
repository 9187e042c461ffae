"""Completion-only LoRA SFT in a plain torch loop (the safety reset).

A plain loop rather than TRL's SFTTrainer: the reset is a fixed number of optimizer steps on a
few hundred short examples, and the loop is shorter than the configuration it would replace, has
no dataset preprocessing pass, and starts in milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfmoa.api.spec import LoraSpec
from selfmoa.models.chat import load_tokenizer
from selfmoa.models.threads import cpu_threads_for
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
) -> SFTResult:
    """`steps` AdamW steps of completion-only LM loss on (prompt, response) examples."""
    if not examples:
        raise ValueError("no examples to train on")
    started = time.monotonic()
    with M.quiet():
        tok = load_tokenizer(base_path)
        M.set_seed(seed)
        model = M.load_policy(M.load_base(base_path), parent_adapter, lora)
    with cpu_threads_for(model):
        device = next(model.parameters()).device
        encoded = [M.encode_pair(tok, e["prompt"], e["response"], max_length) for e in examples]
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        model.train()
        losses: list[float] = []
        tokens = 0
        queue: list[list[int]] = []
        epoch = 0
        for step in range(steps):
            if not queue:
                queue = _batches(len(encoded), batch_size, seed + epoch)
                epoch += 1
            batch = [encoded[i] for i in queue.pop(0)]
            width = max(len(ids) for ids, _ in batch)
            # Right padding: positions are then the same as in an unpadded forward.
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch], device=device)
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=device)
            mask = torch.tensor(
                [[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=device
            )
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += int(mask.sum())
            if progress is not None:
                progress(step + 1, steps, "safety reset")
        M.save_adapter(model, dest)
    return SFTResult(dest, len(examples), steps, time.monotonic() - started, losses, tokens)
