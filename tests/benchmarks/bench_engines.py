"""Engine benchmark (`make bench`): ours vs the naive way, measured side by side in one run.

(a) TransformersEngine on the tiny model: 64 prompts x 32 new tokens, greedy, in batches of 32
    vs one prompt at a time.
(b) OpenAIEngine against our OpenAI-compatible server (micro-batching, backed by the same tiny
    TransformersEngine): 64 requests at concurrency 1 vs 16.

Each variant runs `--repeats` times, alternating, after a warm-up; the table shows medians.
The tiny model is built under `SELFMOA_CACHE` (or a temporary directory). Not a pytest module.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from selfmoa.engines.base import Conversation, Engine, SamplingParams, user


def _prompts(k: int) -> list[Conversation]:
    from selfmoa.tiny import seeds as tiny

    texts = [r["text"] for r in tiny.benign_prompts() + tiny.attack_seeds() + tiny.legit_prompts()]
    return [user(texts[i % len(texts)]) for i in range(k)]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def table(header: list[str], rows: list[list[str]], title: str | None = None) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [table_row(header, widths), "  ".join("-" * w for w in widths)]
    lines += [table_row(r, widths) for r in rows]
    return "\n".join(([title] if title is not None else []) + lines)


def bench_transformers(
    engine: Engine, convs: list[Conversation], params: SamplingParams, repeats: int
) -> str:
    def batched() -> list[str]:
        return [g[0].text for g in engine.chat(convs, params)]

    def one_at_a_time() -> list[str]:
        return [engine.chat([c], params)[0][0].text for c in convs]

    batched(), one_at_a_time()  # warm-up (first-call allocations, lazy inits)
    same = sum(a == b for a, b in zip(batched(), one_at_a_time(), strict=True))
    seq_times, bat_times = [], []
    for _ in range(repeats):  # alternate so drift hits both sides alike
        seq_times.append(_timed(one_at_a_time))
        bat_times.append(_timed(batched))
    t_seq, t_bat = statistics.median(seq_times), statistics.median(bat_times)
    n = len(convs)
    rows = [
        ["one at a time", f"{t_seq:.3f}", f"{n / t_seq:.1f}", "1.00x"],
        ["batched (32)", f"{t_bat:.3f}", f"{n / t_bat:.1f}", f"{t_seq / t_bat:.2f}x"],
    ]
    title = (
        f"(a) TransformersEngine, tiny model: {n} prompts x {params.max_new_tokens} new tokens, "
        f"greedy ({same}/{n} outputs identical batched vs single)"
    )
    return table(["variant", "wall s", "prompts/s", "speed-up"], rows, title)


def bench_server(
    engine: Engine, convs: list[Conversation], params: SamplingParams, repeats: int
) -> str:
    from selfmoa.engines.openai_engine import OpenAIEngine
    from selfmoa.engines.server import OpenAIServer

    with OpenAIServer(engine, max_batch=32) as server:
        clients = {
            c: OpenAIEngine(server.url, model=engine.model, max_concurrency=c) for c in (1, 16)
        }
        try:
            for client in clients.values():  # warm-up: connections, first batches
                client.chat(convs[:16], params)
            times: dict[int, list[float]] = {1: [], 16: []}
            calls: dict[int, int] = {}
            for _ in range(repeats):
                for c, client in clients.items():
                    before = server.stats.engine_calls
                    t0 = time.perf_counter()
                    client.chat(convs, params)
                    times[c].append(time.perf_counter() - t0)
                    calls[c] = server.stats.engine_calls - before
        finally:
            for client in clients.values():
                client.close()
    t1, t16 = statistics.median(times[1]), statistics.median(times[16])
    n = len(convs)
    rows = [
        ["concurrency 1", f"{t1:.3f}", f"{n / t1:.1f}", str(calls[1]), "1.00x"],
        ["concurrency 16", f"{t16:.3f}", f"{n / t16:.1f}", str(calls[16]), f"{t1 / t16:.2f}x"],
    ]
    title = (
        f"(b) OpenAIEngine -> our server (micro-batching, max batch 32) -> tiny TransformersEngine: "
        f"{n} requests x {params.max_new_tokens} new tokens"
    )
    return table(["variant", "wall s", "requests/s", "engine calls", "speed-up"], rows, title)


def _tiny_engine(path: Path) -> Engine:
    from selfmoa.engines.transformers_engine import TransformersEngine

    return TransformersEngine(path, model="selfmoa/tiny", batch_size=32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from selfmoa.engines.provider import cache_dir
    from selfmoa.tiny import ensure_base

    # The same cache as `selfmoa run` (SELFMOA_CACHE, else ~/.cache/selfmoa).
    cache = cache_dir()
    t0 = time.perf_counter()
    path = ensure_base(cache)
    print(f"tiny model at {path} ({time.perf_counter() - t0:.1f}s to build or load)")
    engine = _tiny_engine(path)
    try:
        convs = _prompts(args.prompts)
        params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
        print()
        print(bench_transformers(engine, convs, params, args.repeats))
        print()
        print(bench_server(engine, convs, params, args.repeats))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
