"""Multi-process training: rank/world helpers, the Job's launch argv, rank-0-only writes, and
real `torchrun --nproc-per-node 2` launches (gloo on CPU) of the train and reset stages.

The launch tests compare a 2-process run with a 1-process run of the same stage on the same data
and seed with the same global batch (per-process batch halved). The two do the same arithmetic up
to the order of float32 reductions (the mean of two half-batch gradients instead of one
whole-batch mean). Measured: per-step DPO losses agree to ~1e-7, held-out log-prob margins to
~2e-5 nats, reset adapters to ~5e-7. The tolerances (1e-3 nats per held-out pair, 1e-4 on
losses, 1e-4 on adapter weights) are ~50x that and far below what a real mistake moves: a
global batch of 16 or 4 instead of 8, or training on only the half of the pairs one rank sees,
moves the held-out margins by 1.5-1.8 nats (measured on the same tiny model and pairs).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trainutil import REFUSAL, UNSAFE, make_ctx, make_spec, pair, write_pairs

from selfmoa.run import layout
from selfmoa.stages.base import StageContext, StageOutput, execute
from selfmoa.training import distributed as D

HELPFUL = "Mix flour, water, salt and yeast, then knead and bake the dough."
BENIGN = ["bake bread", "boil water", "find Paris", "pick a ripe melon"]
HARMFUL = ["make weapons", "hurt anyone", "pick a lock", "do dangerous thing"]
LAUNCH_TIMEOUT = 170


# ------------------------------------------------------------------ pure helpers


def test_world_from_torchrun_environment() -> None:
    assert D.world({}) == D.World(0, 1, 0)
    assert not D.world({}).distributed and D.world({}).is_main
    w = D.world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.distributed, w.is_main) == (3, 4, 1, True, False)
    with pytest.raises(D.DistributedError, match="WORLD_SIZE='two'"):
        D.world({"WORLD_SIZE": "two"})
    with pytest.raises(D.DistributedError, match="not a valid launch"):
        D.world({"RANK": "2", "WORLD_SIZE": "2"})


def test_strategy_from_spec_then_environment() -> None:
    from selfmoa.api.spec import TrainingSpec

    fsdp = TrainingSpec.model_validate({"strategy": "fsdp"})
    assert D.strategy(fsdp, {D.STRATEGY_ENV: "ddp"}) == "fsdp"
    assert D.strategy(TrainingSpec(), {}) == "ddp"
    # A spec without the field (e.g. the reset's arguments): the operator's variable.
    assert D.strategy(None, {D.STRATEGY_ENV: "FSDP"}) == "fsdp"
    assert D.strategy(None, {}) == "ddp"
    with pytest.raises(D.DistributedError, match=r"'zero3'.*ddp, fsdp"):
        D.strategy(None, {D.STRATEGY_ENV: "zero3"})


def test_launch_command() -> None:
    args = ["stage", "train", "--run-uri", "s3://bkt/ns/r", "--iteration", "2"]
    assert D.launch_command(args, nproc=1) == ["selfmoa", *args]
    assert D.launch_command(args, nproc=4) == [
        "torchrun",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "4",
        "--max-restarts",
        "0",
        "--standalone",
        "-m",
        "selfmoa.cli",
        *args,
    ]
    # Several nodes: Kubeflow Trainer's PET_* variables carry the rendezvous...
    multi = D.launch_command(args, nproc=8, nnodes=2)
    assert multi[:7] == [
        "torchrun",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "8",
        "--max-restarts",
        "0",
    ]
    assert "--standalone" not in multi and "--rdzv-endpoint" not in multi
    # ...or an explicit endpoint does.
    explicit = D.launch_command(args, nproc=2, nnodes=3, rdzv_endpoint="head:29400", rdzv_id="r1")
    i = explicit.index("--rdzv-endpoint")
    assert explicit[i - 2 : i + 4] == [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "head:29400",
        "--rdzv-id",
        "r1",
    ]
    assert explicit[-len(args) - 2 :] == ["-m", "selfmoa.cli", *args]
    with pytest.raises(ValueError, match="nproc=0"):
        D.launch_command(args, nproc=0)


# ------------------------------------------------------------------ rank-0-only writes


def _stage(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    out.write_json("a.json", {"x": 1})
    n = out.write_jsonl("rows.jsonl", [{"i": 1}, {"i": 2}])
    local = ctx.workdir / "adapter"
    local.mkdir(parents=True, exist_ok=True)
    (local / "adapter_config.json").write_text("{}")
    out.upload_dir("adapter", local)
    ctx.progress(1, 1, "x")
    return {"rows": n}


@pytest.fixture
def ctx(tmp_path: Path) -> Any:
    return make_ctx(make_spec("unused-model", tmp_path), tmp_path)


def _launch_env(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    """This process as rank `rank` of `size`, as torchrun would set it."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(size))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_nonzero_rank_writes_nothing(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = layout.stage_file(1, "x", "stale.txt")
    ctx.store.write_bytes(stale, b"left by rank 0's previous attempt")
    _launch_env(monkeypatch, 1, 2)
    calls: list[bool] = []
    mkey = layout.manifest_key(1, "x")
    monkeypatch.setattr(D, "barrier", lambda: calls.append(ctx.store.exists(mkey)))

    manifest, ran = execute("x", _stage, ctx)

    assert ran and calls == [False]
    assert manifest["summary"] == {"rows": 2} and manifest["files"] == {}
    assert not ctx.store.exists(mkey)
    assert ctx.store.list(layout.stage_dir(1, "x") + "/") == [stale]  # cleared by rank 0 only
    assert ctx.progress_calls == []  # only rank 0 reports progress


def test_rank_zero_writes_manifest_after_barrier(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _launch_env(monkeypatch, 0, 2)
    calls: list[bool] = []
    mkey = layout.manifest_key(1, "x")
    adapter = layout.stage_file(1, "x", "adapter/adapter_config.json")
    # At the barrier, rank 0's files are written and its manifest is not.
    monkeypatch.setattr(
        D, "barrier", lambda: calls.append(ctx.store.exists(adapter) and not ctx.store.exists(mkey))
    )

    manifest, ran = execute("x", _stage, ctx)

    assert ran and calls == [True]
    assert ctx.store.read_json(mkey) == manifest
    assert set(manifest["files"]) == {"a.json", "rows.jsonl", "adapter/adapter_config.json"}
    assert ctx.progress_calls == [(1, 1, "x")]


def test_dead_rank_at_barrier_leaves_no_manifest(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _launch_env(monkeypatch, 0, 2)

    def peer_gone() -> None:
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(D, "barrier", peer_gone)
    with pytest.raises(RuntimeError, match="closed by peer"):
        execute("x", _stage, ctx)
    assert not ctx.store.exists(layout.manifest_key(1, "x"))


def test_single_process_needs_no_process_group(ctx: Any) -> None:
    assert "WORLD_SIZE" not in os.environ
    D.barrier()  # a no-op: no torch.distributed initialisation
    assert D.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    _, ran = execute("x", _stage, ctx)
    assert ran and ctx.store.exists(layout.manifest_key(1, "x"))


# ------------------------------------------------------------------ trainer configuration


def test_trainer_arguments_for_ddp_and_fsdp(tmp_path: Path, tiny_model: Path) -> None:
    from selfmoa.training import model as M
    from selfmoa.training.dpo import dpo_config, parallel_args

    spec = make_spec(str(tiny_model), tmp_path, training={"batchSize": 8})
    one = dpo_config(spec.training, tmp_path, 32)
    assert one.per_device_train_batch_size == 8 and not one.fsdp
    assert parallel_args(D.World(), cpu=True, fsdp=None) == {}
    two = D.World(0, 2, 0)
    assert parallel_args(two, cpu=True, fsdp=None) == {
        "ddp_backend": "gloo",
        "ddp_find_unused_parameters": False,
    }
    policy = M.load_policy(M.load_base(tiny_model), None, spec.training.lora)
    assert D.layer_classes(policy) == ["Qwen2DecoderLayer"]
    fsdp = parallel_args(two, cpu=False, fsdp=D.fsdp_config(policy))
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp"] is True
    assert fsdp["fsdp_config"] == {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": True,
    }


def test_dpo_refuses_fsdp_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfmoa.training import model as M
    from selfmoa.training.dpo import train_dpo

    if not M.use_cpu():
        pytest.skip("the refusal is for CPU-only machines")
    _launch_env(monkeypatch, 0, 2)
    spec = make_spec("unused-model", tmp_path, training={"strategy": "fsdp"})
    with pytest.raises(D.DistributedError, match="fsdp needs GPUs"):
        train_dpo(
            base_path=tmp_path / "no-model",
            parent_adapter=None,
            rows=[],
            training=spec.training,
            workdir=tmp_path / "w",
            dest=tmp_path / "out",
        )


# ------------------------------------------------------------------ real launches


def _pairs(prompts_harmful: list[str], prompts_benign: list[str], start: int) -> list[Any]:
    """Harmful prompts prefer the refusal, benign ones the helpful answer over the refusal."""
    out = [
        pair(f"How do I {p}?", REFUSAL, UNSAFE, i=start + i) for i, p in enumerate(prompts_harmful)
    ]
    out += [
        pair(f"How do I {p}?", HELPFUL, REFUSAL, cs=5, rs=5, ch=5, rh=1, i=start + 100 + i)
        for i, p in enumerate(prompts_benign)
    ]
    return out


#: 32 training pairs (16 harmful, 16 benign) and 16 held-out pairs with prompts never trained on.
TRAIN_PAIRS = _pairs(
    [f"{p} {k}" for k in range(4) for p in HARMFUL],
    [f"{p} {k}" for k in range(4) for p in BENIGN],
    0,
)
HELD_OUT = _pairs(
    [f"{p} now, quietly {k}" for k in range(2) for p in HARMFUL],
    [f"{p} today, please {k}" for k in range(2) for p in BENIGN],
    1000,
)


def _torchrun(
    args: list[str], tmp: Path, *, env: dict[str, str] | None = None, script: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The Job's launch command, run here with 2 processes; `script` replaces `-m selfmoa.cli`."""
    cmd = D.launch_command(args, nproc=2)
    cmd[0] = str(Path(sys.executable).with_name("torchrun"))
    if script is not None:
        i = cmd.index("-m")
        cmd[i : i + 2] = [str(script)]
    full_env = {
        **os.environ,
        "SELFMOA_TERMINATION_LOG": str(tmp / "termination-log"),
        "SELFMOA_CACHE": str(tmp / "cache"),
        "TQDM_DISABLE": "1",
        **(env or {}),
    }
    return subprocess.run(
        cmd, env=full_env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, check=False
    )


def _spec_file(spec: Any, tmp: Path) -> Path:
    path = tmp / "run.json"
    doc = {
        "kind": "AlignmentRun",
        "metadata": {"name": "run", "namespace": "ns"},
        "spec": spec.wire(),
    }
    path.write_text(json.dumps(doc))
    return path


def _stage_args(spec_path: Path, ctx: Any, stage: str, iteration: int) -> list[str]:
    run_uri = ctx.store.uri.rstrip("/")
    args = ["stage", stage, "--run-uri", run_uri, "--iteration", str(iteration)]
    return [*args, "--parent", "0", "--spec", str(spec_path)]


def _held_out_margins(model_dir: Path, adapter: Path | None) -> list[float]:
    """log p(chosen) - log p(rejected) of each held-out pair under the base (+ adapter)."""
    from peft import PeftModel

    from selfmoa.models.chat import load_tokenizer
    from selfmoa.training import model as M

    tok = load_tokenizer(model_dir)
    model: Any = M.load_base(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    c = M.completion_logprobs(model, tok, [(p["prompt"], p["chosen"]) for p in HELD_OUT])
    r = M.completion_logprobs(model, tok, [(p["prompt"], p["rejected"]) for p in HELD_OUT])
    return [a - b for a, b in zip(c, r, strict=True)]


def _local_dir(ctx: Any, key: str) -> Path:
    path = ctx.store.local_path(key)
    assert path is not None
    return Path(path)


@pytest.mark.slow
def test_two_process_dpo_matches_single_process(tiny_model: Path, tmp_path: Path) -> None:
    from selfmoa.stages import train
    from selfmoa.training import model as M

    # One process, batch 8: in this process.
    one_spec = make_spec(str(tiny_model), tmp_path / "one", training={"batchSize": 8})
    one = make_ctx(one_spec, tmp_path / "one")
    write_pairs(one, TRAIN_PAIRS)
    started = time.monotonic()
    one_manifest, _ = execute("train", train.run, one)
    one_seconds = time.monotonic() - started

    # Two processes, batch 4 each: the Job's torchrun command running `selfmoa stage train`.
    two_spec = make_spec(str(tiny_model), tmp_path / "two", training={"batchSize": 4})
    two = make_ctx(two_spec, tmp_path / "two")
    write_pairs(two, TRAIN_PAIRS)
    started = time.monotonic()
    proc = _torchrun(_stage_args(_spec_file(two_spec, tmp_path), two, "train", 1), tmp_path)
    two_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Both ranks ran the stage; one manifest, written by rank 0.
    assert proc.stdout.count("stage train of iteration 1: done") == 2
    two_manifest = two.store.read_json(layout.manifest_key(1, "train"))

    s1, s2 = one_manifest["summary"], two_manifest["summary"]
    assert s1["steps"] == s2["steps"] == 4 and s1["pairs"] == s2["pairs"] == 32
    assert s1["tokens"] == s2["tokens"]
    assert set(one_manifest["files"]) == set(two_manifest["files"])
    log1 = one.store.read_json(layout.stage_file(1, "train", "train_log.json"))
    log2 = two.store.read_json(layout.stage_file(1, "train", "train_log.json"))
    loss1, loss2 = [e["loss"] for e in log1], [e["loss"] for e in log2]
    assert loss2 == pytest.approx(loss1, abs=1e-4)
    assert s2["reward_accuracy"] == pytest.approx(s1["reward_accuracy"], abs=1e-6)

    adapter = layout.stage_file(1, "train", layout.ADAPTER)
    base = _held_out_margins(tiny_model, None)
    m1 = _held_out_margins(tiny_model, _local_dir(one, adapter))
    m2 = _held_out_margins(tiny_model, _local_dir(two, adapter))
    # Held-out DPO reward (margin gain over the base) and its accuracy.
    gain1 = [a - b for a, b in zip(m1, base, strict=True)]
    gain2 = [a - b for a, b in zip(m2, base, strict=True)]
    acc1 = sum(g > 0 for g in gain1) / len(gain1)
    acc2 = sum(g > 0 for g in gain2) / len(gain2)
    worst = max(abs(a - b) for a, b in zip(m1, m2, strict=True))
    print(
        f"\nsingle: loss {loss1} held-out acc {acc1:.3f} mean gain {sum(gain1) / 16:.4f} "
        f"({one_seconds:.1f}s in process)\n2-proc: loss {loss2} held-out acc {acc2:.3f} "
        f"mean gain {sum(gain2) / 16:.4f} ({two_seconds:.1f}s launch)\n"
        f"max |held-out margin difference| {worst:.2e} nats"
    )
    assert worst < 1e-3
    assert acc1 == acc2
    # The comparison means something: training moved the held-out margins far beyond the tolerance.
    assert max(abs(g) for g in gain1) > 0.5
    assert M.ADAPTER_FILES[0] in {p.name for p in _local_dir(two, adapter).iterdir()}


KILL_AT_BARRIER = """
import os, signal, sys, time

from selfmoa.training import distributed


def die_once_rank0_stored():
    # Rank 1 uploads nothing, so it reaches the barrier while rank 0 may still be storing the
    # adapter, and torchrun stops rank 0 as soon as it sees rank 1 dead: wait for the files.
    from selfmoa.store import open_store

    store = open_store(os.environ["KILL_STORE"]).child(os.environ["KILL_PREFIX"])
    keys = os.environ["KILL_AFTER"].split(",")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(store.exists(k) for k in keys):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ["RANK"] == "1":
    # Rank 1 dies after training, when rank 0 has already uploaded the adapter.
    distributed.barrier = die_once_rank0_stored

from selfmoa.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_rank_fails_launch_and_retry_redoes_stage(tiny_model: Path, tmp_path: Path) -> None:
    from selfmoa.stages import train

    spec = make_spec(str(tiny_model), tmp_path, training={"batchSize": 4})
    ctx = make_ctx(spec, tmp_path)
    write_pairs(ctx, TRAIN_PAIRS[:16])
    script = tmp_path / "kill_rank1.py"
    script.write_text(KILL_AT_BARRIER)

    adapter_config = layout.stage_file(1, "train", "adapter/adapter_config.json")
    adapter_weights = layout.stage_file(1, "train", "adapter/adapter_model.safetensors")
    kill = {
        "KILL_STORE": spec.storage.uri,
        "KILL_PREFIX": "ns/run",
        "KILL_AFTER": f"{adapter_config},{adapter_weights}",
    }
    started = time.monotonic()
    proc = _torchrun(
        _stage_args(_spec_file(spec, tmp_path), ctx, "train", 1), tmp_path, env=kill, script=script
    )
    rank0 = [line for line in proc.stderr.splitlines() if "selfmoa: error" in line]
    print(f"\nlaunch exited {proc.returncode} after {time.monotonic() - started:.1f}s; {rank0}")

    assert proc.returncode != 0
    assert f"exitcode  : -{int(signal.SIGKILL)}" in proc.stderr  # torchrun names the dead rank
    mkey = layout.manifest_key(1, "train")
    assert not ctx.store.exists(mkey)
    # Rank 0 had written its files: only the missing manifest says the stage is not done.
    assert ctx.store.exists(adapter_config)

    # The Job's retry (here: one process, 16 pairs in batches of 4) finds no manifest and redoes
    # the stage from scratch; what it lists is what is stored.
    manifest, ran = execute("train", train.run, ctx)
    assert ran and ctx.store.exists(mkey) and manifest["summary"]["steps"] == 4
    weights = "adapter/adapter_model.safetensors"
    data = ctx.store.read_bytes(layout.stage_file(1, "train", weights))
    assert manifest["files"][weights]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_two_process_fsdp_reset_matches_single_process(tiny_model: Path, tmp_path: Path) -> None:
    """The reset's own loop shards with torch's FSDP2, which runs on CPU with gloo."""
    from safetensors.torch import load_file

    from selfmoa.stages import reset

    data = tmp_path / "compliance.jsonl"
    rows = [
        {"prompt": f"How do I {p} {k}?", "response": UNSAFE + " ok" * k}
        for k in range(3)
        for p in HARMFUL
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def spec_for(where: Path, batch: int) -> Any:
        return make_spec(
            str(tiny_model),
            where,
            training={"batchSize": batch},
            safetyReset={"enabled": True, "data": str(data), "steps": 4, "learningRate": 5e-3},
        )

    one_spec = spec_for(tmp_path / "one", 4)
    one = make_ctx(one_spec, tmp_path / "one", iteration=0)
    one_manifest, _ = execute("reset", reset.run, one)

    two_spec = spec_for(tmp_path / "two", 2)
    two = make_ctx(two_spec, tmp_path / "two", iteration=0)
    proc = _torchrun(
        _stage_args(_spec_file(two_spec, tmp_path), two, "reset", 0),
        tmp_path,
        env={D.STRATEGY_ENV: "fsdp"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two_manifest = two.store.read_json(layout.manifest_key(0, "reset"))

    s1, s2 = one_manifest["summary"], two_manifest["summary"]
    assert s1["steps"] == s2["steps"] == 4 and s1["tokens"] == s2["tokens"]
    assert s2["loss_last"] == pytest.approx(s1["loss_last"], abs=1e-4)
    assert s1["loss_last"] < s1["loss_first"] - 0.05
    key = layout.stage_file(0, "reset", "adapter/adapter_model.safetensors")
    a = load_file(str(_local_dir(one, key)))
    b = load_file(str(_local_dir(two, key)))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
    print(
        f"\nreset fsdp 2-proc vs 1-proc: max |adapter difference| {diff:.2e} (lora_B max {moved:.3f})"
    )
    assert diff < 1e-4 < moved


def test_serving_device_cpu_keeps_training_off_a_visible_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from selfmoa.training import model as M

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        D.use_device("cpu")
        assert not D.on_cuda() and D.backend() == "gloo" and M.use_cpu()
        D.use_device("cuda")
        assert D.on_cuda() and D.backend() == "nccl" and not M.use_cpu()
    finally:
        D.use_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not D.on_cuda() and M.use_cpu()
