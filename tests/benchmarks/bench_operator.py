"""Operator overhead against KMock: Job-complete -> next child latency, API requests per iteration.

    .venv/bin/python tests/benchmarks/bench_operator.py [--runs 1 20] [--iterations 2]

Stand-in stages (instant manifests) so it measures the operator, not the model. For 1 and for N
concurrent runs it prints the median/p90 time from a Job marked Complete to the next Job of the
same run appearing, and the operator's API requests per loop iteration (Kopf + executor, as the
emulator counted them). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from harness import (
    Cluster,
    Operator,
    apply,
    cluster_server,
    complete_job,
    container,
    job_finished,
    jobs,
    run_status,
    stand_in_stage,
    tiny_run,
)


async def _one(n_runs: int, iterations: int) -> dict[str, float]:
    async with cluster_server() as cluster:
        op = Operator(cluster, resync=60.0)
        await op.start()
        tmp = Path(tempfile.mkdtemp(prefix="bench-op-"))
        names = [f"b{i}" for i in range(n_runs)]
        mark = 0
        try:
            for n in names:
                await apply(
                    cluster, tiny_run(n, tmp, iterations=iterations, safetyReset={"enabled": False})
                )
            mark = len(Cluster.calls)
            latencies: list[float] = []
            pending: dict[str, float] = {}  # run -> time its Job was marked complete
            done: set[str] = set()
            t0 = time.perf_counter()
            while len(done) < n_runs:
                if time.perf_counter() - t0 > 400:
                    raise TimeoutError(
                        f"benchmark did not finish: {[run_status(cluster, n) for n in names][:1]} {sorted(jobs(cluster))}"
                    )
                now_jobs = jobs(cluster)
                for n in names:
                    if n in done:
                        continue
                    if run_status(cluster, n).get("phase") in ("Succeeded", "Failed"):
                        done.add(n)
                        pending.pop(n, None)
                        continue
                    active = [
                        j
                        for j in now_jobs.values()
                        if j["metadata"]["name"].startswith(f"{n}-i") and not job_finished(j)
                    ]
                    if not active:
                        continue
                    if n in pending:
                        latencies.append(time.perf_counter() - pending.pop(n))
                    job = active[0]
                    stand_in_stage(list(container(job)["args"]), {})
                    await complete_job(cluster, job["metadata"]["name"])
                    pending[n] = time.perf_counter()
                await asyncio.sleep(0.002)
            operator_calls = [
                c for c in Cluster.calls[mark:] if not (c[0] == "PATCH" and c[1] == "jobs")
            ]
        finally:
            await op.stop()
    loop_iterations = n_runs * iterations
    return {
        "runs": n_runs,
        "median_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * statistics.quantiles(latencies, n=10)[-1]
        if len(latencies) >= 10
        else float("nan"),
        "transitions": len(latencies),
        "requests_per_iteration": len(operator_calls) / loop_iterations,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[1, 20])
    p.add_argument("--iterations", type=int, default=2)
    args = p.parse_args(argv)
    print(
        f"{'runs':>5} {'transitions':>11} {'median ms':>10} {'p90 ms':>8} {'API req/iteration':>18}"
    )
    for n in args.runs:
        r = asyncio.run(_one(n, args.iterations))
        print(
            f"{r['runs']:>5} {r['transitions']:>11} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} "
            f"{r['requests_per_iteration']:>18.1f}"
        )
    print(
        "(requests: everything the operator sent, watch GETs included; the player's Job status patches excluded)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
