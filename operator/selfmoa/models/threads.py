"""One CPU thread for small models: the tiny profile's matrices are too small to split.

On 2 busy cores torch's default intra-op threads make OpenMP workers spin waiting for each other:
a DPO stage took 9.4 s with the default and 2.0 s with one thread (identical losses), and the
tiny base build 590 s against 38 s. Large models, and anything on a GPU, keep torch's default.
Imported only by code that already imports torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

#: Below this many parameters a model runs on one CPU thread.
SMALL_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def cpu_threads_for(model: Any) -> Iterator[None]:
    n = sum(p.numel() for p in model.parameters())
    if torch.cuda.is_available() or n >= SMALL_MODEL_PARAMS:
        yield
        return
    with one_thread():
        yield
