"""`make run` benchmark (`make bench`): the tiny loop as a newcomer runs it, where its time goes.

Runs `selfmoa run manifests/examples/tiny.yaml` (as shipped: generation batches of
`serving.batchSize` 256) and the same file with the engine's old batch of 32, `--pairs` times
each, alternating A B A B, each into a fresh store with one warm model cache (the tiny base ships
in the package, so a fresh clone's cache costs under a second). Prints each stage's seconds
(summed over the loop's iterations, read from the stages' manifests) and the whole command's
wall time, medians, with the ratio side by side and the goal of the speed issue: at most 60 s on
2 quiet cores. Not a pytest module: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import table

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "examples" / "tiny.yaml"
GOAL_S = 60.0
#: The in-process engine's batch before tiny.yaml set its own.
OLD_BATCH = 32


def _variant(dest: Path, batch: int | None) -> Path:
    """tiny.yaml as shipped (None) or with `serving.batchSize` set to `batch`."""
    if batch is None:
        return MANIFEST
    doc = yaml.safe_load(MANIFEST.read_text())
    doc["spec"].setdefault("serving", {})["batchSize"] = batch
    path = dest / f"tiny-batch{batch}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _stage_seconds(manifest: Path, store: Path) -> dict[str, float]:
    """Seconds per stage summed over the iterations, as `selfmoa run` reads them."""
    from selfmoa.api import parse_run
    from selfmoa.local.executor import open_run_store
    from selfmoa.run import outputs
    from selfmoa.run import state as run_state

    run = parse_run(yaml.safe_load(manifest.read_text()))
    runs = open_run_store(run, store.as_uri())
    out: dict[str, float] = {}
    done = run_state.finished_stages(runs, run.spec)
    for key, seconds in outputs.stage_seconds(runs, done).items():
        stage = key.split("/")[1]  # iter-NNN/STAGE
        out[stage] = out.get(stage, 0.0) + seconds
    return out


def _one(manifest: Path, store: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    cmd = [sys.executable, "-m", "selfmoa.cli", "run", str(manifest), "--store", str(store)]
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"bench_make_run: {manifest.name} exited {done.returncode}: {tail[0]}")
    return wall, _stage_seconds(manifest, store)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=2, help="A B rounds (default 2)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-make-run-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SELFMOA_CACHE": str(work / "cache")}
        variants = {
            f"shipped (batch {_batch_of(MANIFEST)})": _variant(work, None),
            f"batch {OLD_BATCH}": _variant(work, OLD_BATCH),
        }
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in variants}
        for r in range(args.pairs):
            for i, (name, manifest) in enumerate(variants.items()):
                store = work / f"store-{r}-{i}"
                runs[name].append(_one(manifest, store, env))
                print(f"  {name}, round {r + 1}: {runs[name][-1][0]:.1f} s", flush=True)
    (a, b) = variants
    stages = sorted({s for v in runs.values() for _, per in v for s in per})

    def med(name: str, stage: str | None) -> float:
        vals = [wall if stage is None else per.get(stage, 0.0) for wall, per in runs[name]]
        return statistics.median(vals)

    rows = [
        [s, f"{med(a, s):.1f}", f"{med(b, s):.1f}", _ratio(med(a, s), med(b, s))] for s in stages
    ]
    wall_a, wall_b = med(a, None), med(b, None)
    rows.append(["whole command (wall)", f"{wall_a:.1f}", f"{wall_b:.1f}", _ratio(wall_a, wall_b)])
    title = (
        f"`make run` (tiny.yaml: reset + up to 5 iterations), median of {args.pairs} A B pairs, "
        f"seconds per stage summed over iterations"
    )
    print(table(["stage", a, b, "A/B"], rows, title))
    verdict = "met" if wall_a <= GOAL_S else "missed"
    print(f"goal: at most {GOAL_S:.0f} s on 2 quiet cores: {wall_a:.1f} s, {verdict}")


def _batch_of(manifest: Path) -> int:
    doc = yaml.safe_load(manifest.read_text())
    return int(doc["spec"].get("serving", {}).get("batchSize", OLD_BATCH))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


if __name__ == "__main__":
    main()
