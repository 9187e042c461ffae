"""Capability kept, measured with lm-evaluation-harness on a real model (optional).

The tiny CPU profile measures what alignment cost the model with its own perplexity; a real model
is better judged on the benchmarks people know (hellaswag, arc, mmlu...). This module runs
lm-eval's tasks on a local Hugging Face model, with or without a LoRA adapter, and returns one
primary score per task. It never reaches the network: lm-eval, the model and every task's data
must already be on the machine (the HF hub and datasets caches, or local tasks in an include_path
directory), and anything missing is one `CapabilityUnavailable` line that says what to do, raised
before the model is loaded wherever that can be known.

lm-eval is an optional extra (`selfmoa[lmeval]`) and is imported only when a measure is taken.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfmoa.stages.lm_eval.runtime import offline, quiet, seed_everything

INSTALL_HINT = "pip install 'selfmoa[lmeval]'"

#: Metrics tried in order; the first a task reports is its primary score.
PREFERRED_METRICS = ("acc_norm", "acc")

# A hub id ("org/name" or "name"), as opposed to a filesystem path that isn't there.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# lm-eval's own result keys that are not metrics.
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}

# Errors that mean "the data isn't here", whatever library raised them: a network error under
# offline mode, a missing local file, or the hub's and datasets' own not-found errors.
_DATA_MISSING_NAMES = {
    "ConnectionError",
    "FileNotFoundError",
    "DatasetNotFoundError",
    "DataFilesNotFoundError",
    "EmptyDatasetError",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "RepositoryNotFoundError",
    "GatedRepoError",
}


class CapabilityUnavailable(Exception):
    """lm-eval cannot run here: str(e) is one line a user can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str  # the primary metric used, e.g. "acc_norm" or "acc"
    value: float
    samples: int


def run_lm_eval(
    model: str,
    *,
    adapter: str | None,
    tasks: Sequence[str],
    limit: int | None,
    include_path: str | None,
    device: str,
    batch_size: int = 1,
    seed: int = 0,
) -> list[TaskScore]:
    """Score `model` (plus `adapter`) on lm-eval `tasks`, at most `limit` examples each.

    `model` is a local HF model directory or a hub id already in the local hub cache; `adapter` a
    local PEFT adapter directory; `include_path` a directory of task YAMLs added to lm-eval's
    own. One `TaskScore` per task, in the order asked (a group or tag without an aggregate score
    gives one per member task). Raises `CapabilityUnavailable` when lm-eval, a task, its data,
    the model, the adapter or the device is not available here.
    """
    lm_eval_modules = _import_lm_eval()
    _check_arguments(model, adapter, tasks, limit, include_path, device, batch_size)
    with offline(), quiet():
        manager = _task_manager(lm_eval_modules, list(tasks), include_path)
        loaded, members = _load_tasks(manager, list(tasks))
        for task_obj in loaded["tasks"].values():
            # What simple_evaluate does to every task: zero-shot unless the task says otherwise,
            # and few-shot examples drawn with our seed.
            if task_obj.get_config("num_fewshot") is None:
                task_obj.set_config(key="num_fewshot", value=0)
            task_obj.set_fewshot_seed(seed=seed)
        lm = _load_model(lm_eval_modules, model, adapter, device, batch_size)
        seed_everything(seed)
        from selfmoa.models.threads import cpu_threads_for

        with cpu_threads_for(lm.model):
            results = lm_eval_modules.evaluate(
                lm=lm,
                task_dict=loaded,
                limit=limit,
                # Standard errors are bootstrapped (100k resamples by default) and unused here.
                bootstrap_iters=0,
                log_samples=False,
                write_out=False,
                cache_requests=False,
            )
    if results is None:  # only on non-zero ranks of a distributed launch, which we never start
        raise CapabilityUnavailable("lm-eval returned no results (is this a distributed launch?)")
    return _scores(results, members)


def primary_metric(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The task's headline metric: acc_norm, else acc, else its first numeric non-stderr one.

    lm-eval keys its metrics "name,filter" (e.g. "acc,none"); the filter part is dropped."""
    numeric: dict[str, float] = {}
    for key, value in metrics.items():
        name = key.split(",", 1)[0]
        if name in _NOT_METRICS or name.endswith("_stderr") or name in numeric:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        numeric[name] = float(value)
    for name in PREFERRED_METRICS:
        if name in numeric:
            return name, numeric[name]
    return next(iter(numeric.items()), None)


class _LmEval:
    """The parts of lm-eval this module calls, imported once per call."""

    def __init__(self) -> None:
        import lm_eval.evaluator
        import lm_eval.tasks

        self.evaluate: Any = lm_eval.evaluator.evaluate
        self.TaskManager: Any = lm_eval.tasks.TaskManager
        self.version: str = str(lm_eval.__version__)

    @property
    def HFLM(self) -> Any:
        # Imported late: it pulls in torch and transformers, which the task checks don't need.
        from lm_eval.models.huggingface import HFLM

        return HFLM


def _import_lm_eval() -> _LmEval:
    try:
        return _LmEval()
    except ImportError as e:
        missing = getattr(e, "name", None) or "lm_eval"
        if missing.split(".")[0] == "lm_eval":
            raise CapabilityUnavailable(f"lm-eval is not installed: {INSTALL_HINT}") from None
        raise CapabilityUnavailable(
            f"lm-eval is installed but cannot be imported (missing {missing}): {INSTALL_HINT}"
        ) from None


def _check_arguments(
    model: str,
    adapter: str | None,
    tasks: Sequence[str],
    limit: int | None,
    include_path: str | None,
    device: str,
    batch_size: int,
) -> None:
    if isinstance(tasks, str):
        raise TypeError("tasks must be a sequence of task names, not one string")
    if not tasks:
        raise CapabilityUnavailable("no lm-eval tasks were given")
    if limit is not None and limit < 1:
        raise CapabilityUnavailable(f"limit must be at least 1, not {limit}")
    if batch_size < 1:
        raise CapabilityUnavailable(f"batch_size must be at least 1, not {batch_size}")
    if not Path(model).expanduser().is_dir() and not _HUB_ID.match(model):
        raise CapabilityUnavailable(f"model directory {model} does not exist")
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if not adapter_dir.is_dir():
            raise CapabilityUnavailable(f"adapter directory {adapter} does not exist")
        if not (adapter_dir / "adapter_config.json").is_file():
            raise CapabilityUnavailable(
                f"adapter directory {adapter} has no adapter_config.json (not a PEFT adapter)"
            )
        # Without weights PEFT would take the directory for a hub id and say only that.
        if not any((adapter_dir / f).is_file() for f in _ADAPTER_WEIGHTS):
            raise CapabilityUnavailable(
                f"adapter directory {adapter} has no {' or '.join(_ADAPTER_WEIGHTS)}"
            )
    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise CapabilityUnavailable(f"include_path {include_path} is not a directory")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CapabilityUnavailable(f"device {device} was asked for but no CUDA GPU is visible")
    elif device != "cpu":
        raise CapabilityUnavailable(f"device must be 'cpu' or 'cuda', not {device!r}")


def _task_manager(lm_eval: _LmEval, tasks: list[str], include_path: str | None) -> Any:
    """A TaskManager that knows every task asked for, or CapabilityUnavailable naming the rest.

    Indexing lm-eval's own ~15k task YAMLs takes 10-15 s on 2 cores, so it is done at most once
    per process, only when a task isn't in include_path, and a manager over both is built only
    when the tasks asked for mix the two."""
    include = str(Path(include_path).expanduser()) if include_path is not None else None
    local_names: set[str] = set()
    if include is not None:
        local = lm_eval.TaskManager(include_path=include, include_defaults=False)
        # Plain tasks only: a local group or tag may name built-in tasks.
        if all(_is_plain_task(local, name) for name in tasks):
            return local
        local_names = set(local.all_tasks)
    builtin = _builtin_task_manager(lm_eval.TaskManager)
    unknown = [name for name in tasks if name not in local_names and name not in builtin.all_tasks]
    if unknown:
        where = "lm-eval's tasks" + (f" or in {include_path}" if include_path else "")
        raise CapabilityUnavailable(
            f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"not found among {where} (lm-eval {lm_eval.version})"
        )
    if include is None or not local_names.intersection(tasks):
        return builtin
    return lm_eval.TaskManager(include_path=include)


@functools.cache
def _builtin_task_manager(task_manager_class: Any) -> Any:
    # The built-in tasks ship inside the installed package and can't change while we run, so
    # their index is built once per process. A TaskManager builds new Task objects on every load.
    return task_manager_class()


def _is_plain_task(manager: Any, name: str) -> bool:
    entry = manager.task_index.get(name)
    return entry is not None and entry.kind.name in ("TASK", "PY_TASK")


def _load_tasks(manager: Any, tasks: list[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """lm-eval's loaded task dict, and the leaf tasks each name stands for (itself, or a group's
    or tag's members). Building a task reads its data, so a missing data set fails here, named,
    before any model is loaded."""
    merged: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    members: dict[str, list[str]] = {}
    for name in tasks:
        try:
            one = manager.load([name])
        except Exception as e:
            if _is_missing_data(e):
                raise CapabilityUnavailable(
                    f"lm-eval task {name}: its data is not available offline ({_reason(e)}); "
                    "lm-eval's datasets must be in the local HF datasets cache, "
                    "or give the task as a local one via include_path"
                ) from None
            raise CapabilityUnavailable(
                f"lm-eval task {name} could not be loaded: {_reason(e)}"
            ) from None
        for key in merged:
            merged[key].update(one.get(key) or {})
        members[name] = list(one["tasks"])
    return merged, members


def _load_model(lm_eval: _LmEval, model: str, adapter: str | None, device: str, batch: int) -> Any:
    from selfmoa.models.chat import load_tokenizer

    try:
        # Our loader keeps a saved tokenizer exactly as saved (see chat.load_tokenizer); lm-eval's
        # own would go through AutoTokenizer.
        tokenizer = load_tokenizer(str(Path(model).expanduser()) if _is_dir(model) else model)
        return lm_eval.HFLM(
            pretrained=str(Path(model).expanduser()) if _is_dir(model) else model,
            tokenizer=tokenizer,
            peft=str(Path(adapter).expanduser()) if adapter is not None else None,
            device=device,
            batch_size=batch,
            # bf16 checkpoints are slow, and less reproducible, on CPU kernels.
            dtype="float32" if device == "cpu" else "auto",
        )
    except CapabilityUnavailable:
        raise
    except Exception as e:
        if not _is_dir(model) and (isinstance(e, OSError) or _is_missing_data(e)):
            raise CapabilityUnavailable(
                f"model {model} is neither a local directory nor in the local HF hub cache "
                f"({_reason(e)})"
            ) from None
        what = f"model {model}" + (f" with adapter {adapter}" if adapter else "")
        raise CapabilityUnavailable(f"lm-eval could not load {what}: {_reason(e)}") from None


def _scores(results: dict[str, Any], members: dict[str, list[str]]) -> list[TaskScore]:
    by_name: dict[str, Any] = results.get("results", {})
    n_samples: dict[str, Any] = results.get("n-samples", {})

    def score(name: str, leaves: list[str]) -> TaskScore | None:
        found = primary_metric(by_name.get(name, {}))
        if found is None:
            return None
        count = sum(int(n_samples.get(leaf, {}).get("effective", 0)) for leaf in leaves)
        return TaskScore(task=name, metric=found[0], value=found[1], samples=count)

    out: list[TaskScore] = []
    for name, leaves in members.items():
        whole = score(name, leaves)
        if whole is not None:
            out.append(whole)
            continue
        # A tag, or a group without an aggregate: lm-eval scores only its member tasks.
        for leaf in leaves:
            part = score(leaf, [leaf])
            if part is not None and part not in out:
                out.append(part)
    if not out:
        raise CapabilityUnavailable(f"lm-eval reported no numeric metric for {', '.join(members)}")
    return out


def _is_dir(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def _is_missing_data(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    # The telling error is often a cause or context of the one raised (datasets wraps the hub's).
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(cls.__name__ in _DATA_MISSING_NAMES for cls in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _reason(e: BaseException) -> str:
    text = _one_line(str(e)) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
