"""GPU benchmark (`make bench-gpu`): one iteration on CUDA vs the same on the CPU, side by side.

A random-init model shaped like Qwen2.5-0.5B (24 layers, hidden 896, 14 heads, 2 KV heads,
vocab 151936; no download: built from a config, with the tiny profile's tokenizer) is
(a) asked for 64 prompts x 64 new tokens through `TransformersEngine` on each device: tokens/s;
(b) taken through one whole iteration of the loop (`selfmoa run`: redteam, respond, judge,
    pairs, train, evaluate) with a small config: wall time per stage on each device.
The CPU side runs in a subprocess with `CUDA_VISIBLE_DEVICES=""`, so nothing in it (training
included) can reach the GPU. On a machine without a CUDA GPU it says so and exits 0.
Not a pytest module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QWEN_05B_SHAPE = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def build_model(dest: Path) -> Path:
    """The Qwen2.5-0.5B-shaped model with random weights, saved with the tiny tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selfmoa.tiny.build import build_tokenizer

    tok = build_tokenizer()
    config = Qwen2Config(
        **QWEN_05B_SHAPE,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def generation(model_dir: Path, device: str) -> dict[str, float]:
    from selfmoa.engines.base import SamplingParams, user
    from selfmoa.engines.transformers_engine import TransformersEngine
    from selfmoa.tiny.seeds import benign_prompts

    texts = [r["text"] for r in benign_prompts()]
    convs = [user(texts[i % len(texts)]) for i in range(64)]
    # min_new_tokens is not in SamplingParams: random weights rarely emit eos early, and the
    # token count below is what was generated, so the rate is honest either way.
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    engine = TransformersEngine(model_dir, model="bench", batch_size=32, device=device)
    engine.chat(convs[:4], params)  # warm-up
    t0 = time.perf_counter()
    gens = engine.chat(convs, params)
    seconds = time.perf_counter() - t0
    tokens = sum(g[0].tokens for g in gens)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def one_iteration(model_dir: Path, store: Path, device: str) -> dict[str, float]:
    """Wall time per stage of one loop iteration (`selfmoa run`, resumable, fresh store)."""
    from selfmoa.api import parse_run
    from selfmoa.local.executor import run_local

    run = parse_run(
        {
            "metadata": {"name": f"bench-{device}"},
            "spec": {
                "policy": {"model": str(model_dir)},
                "redTeam": {"promptsPerIteration": 32},
                "sampling": {"responsesPerPrompt": 2, "maxNewTokens": 32},
                "judges": [
                    {"name": "refusal", "objective": "safety", "kind": "heuristic"},
                    {"name": "helpful", "objective": "helpfulness", "kind": "heuristic"},
                ],
                "training": {"batchSize": 8, "maxLength": 128, "epochs": 1},
                "evaluation": {"maxPrompts": 32},
                "iterations": 1,
                "stopWhen": {"patience": 5},
                "serving": {"device": device},
                "storage": {"uri": f"file://{store}"},
            },
        }
    )
    result = run_local(run)
    return {
        key.split("/", 1)[1]: s
        for key, s in result.stage_seconds.items()
        if key.startswith("iter-001")
    }


def _measure(model_dir: Path, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as store:
        return {
            "generation": generation(model_dir, device),
            "stages": one_iteration(model_dir, Path(store), device),
        }


def _child(model_dir: str, device: str) -> int:
    print(json.dumps(_measure(Path(model_dir), device)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(*args.child)
    import torch

    if not torch.cuda.is_available():
        print(
            f"bench-gpu: no CUDA GPU visible to torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda or 'none'}); nothing to measure here."
        )
        return 0
    name = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "qwen-0.5b-shaped")
        results: dict[str, dict[str, Any]] = {}
        for device, env in (("cuda", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(model_dir), device],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
                text=True,
            )
            results[device] = json.loads(out.stdout.strip().splitlines()[-1])
    gpu, cpu = results["cuda"], results["cpu"]
    print(f"bench-gpu on {name} vs {os.cpu_count()} CPU cores; model: Qwen2.5-0.5B shape, random")
    g, c = gpu["generation"], cpu["generation"]
    print("generation, 64 prompts x 64 new tokens, greedy:")
    print(f"  cuda {g['tokens_per_s']:9.1f} tok/s ({g['seconds']:.1f} s)")
    print(f"  cpu  {c['tokens_per_s']:9.1f} tok/s ({c['seconds']:.1f} s)")
    print(f"  ratio cuda/cpu: {g['tokens_per_s'] / c['tokens_per_s']:.1f}x")
    print("one iteration, seconds per stage:")
    print(f"  {'stage':<10}{'cuda':>9}{'cpu':>9}{'cpu/cuda':>10}")
    from selfmoa.run.stage_table import NAMES

    for stage in [n for n in NAMES if n in gpu["stages"]]:
        s, other = gpu["stages"][stage], cpu["stages"].get(stage, float("nan"))
        print(f"  {stage:<10}{s:9.1f}{other:9.1f}{other / s if s else float('nan'):10.1f}")
    total_g, total_c = sum(gpu["stages"].values()), sum(cpu["stages"].values())
    print(f"  {'total':<10}{total_g:9.1f}{total_c:9.1f}{total_c / total_g:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
