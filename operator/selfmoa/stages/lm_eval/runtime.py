"""The process state an lm-eval measure runs in: no network, no logs or progress bars, seeded
random generators (`selfmoa.stages.lm_eval.runner.run_lm_eval` enters all three)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterator
from typing import Any


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators, all from `seed`."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The libraries read these switches at import time, so the environment alone is not enough once
# they are loaded: the module constants are set too, and everything is put back afterwards.
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_OFFLINE_CONSTANTS = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_DATASETS_OFFLINE"),
)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No network for the duration: a missing data set fails at once instead of after ~25 s of
    retries against an unreachable hub, and a run never depends on what the hub serves today."""
    old_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    old_consts: list[tuple[Any, str, Any]] = []
    try:
        for k in _OFFLINE_ENV:
            os.environ[k] = "1"
        for module_name, attr in _OFFLINE_CONSTANTS:
            __import__(module_name)
            module = sys.modules[module_name]
            if hasattr(module, attr):
                old_consts.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
        yield
    finally:
        for module, attr, value in reversed(old_consts):
            setattr(module, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval logs every step at INFO and draws progress bars; a stage's log wants neither.

    tqdm reads TQDM_DISABLE only when it is imported, so the bars (written to whatever
    sys.stderr is when each starts) go to /dev/null instead; logging handlers keep their streams.
    """
    loggers = [logging.getLogger(n) for n in ("lm_eval", "datasets", "transformers", "peft")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
