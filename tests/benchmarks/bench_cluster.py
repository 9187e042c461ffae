"""tiny-cpu on a real control plane vs the same file run locally: wall times side by side.

    .venv/bin/python tests/benchmarks/bench_cluster.py [--skip-cluster] [--keep DIR]

Local: `selfmoa run manifests/examples/tiny-cpu.yaml` into a temporary store, with an empty model
cache. Cluster: the real-control-plane tier's harness (tests/cluster: kube-apiserver +
kube-controller-manager 1.20, the chart installed with Helm, the operator as a process with the
chart ServiceAccount's token, the kubelet player running each Pod on its own filesystem, the
run's store on loopback S3), the same file applied with that S3 storage, timed from apply to
Succeeded. Prints both times and their ratio (issue #14: within 2x), per stage Job the Pod's
run time, the operator's delay before the next Job and its API requests (apiserver audit log),
and the operator's peak RSS. Never asserts timings. Without a control plane that is built or
can be built it says so in one line and exits 0. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))  # realcluster, kubelet

import realcluster as rc  # noqa: E402

EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
LABEL_STAGE = "selfmoa.dev/stage"
LABEL_ITERATION = "selfmoa.dev/iteration"


def _ts(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp (the API's and the audit log's)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_local(example: Path, work: Path) -> float:
    """Wall time of `selfmoa run` into a fresh store, with a model cache of its own (cold)."""
    env = dict(os.environ, SELFMOA_CACHE=str(work / "cache"), HOME=str(work))
    t = time.monotonic()
    proc = subprocess.run(
        [str(rc.VENV_BIN / "selfmoa"), "run", str(example), "--store", str(work / "store"), "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"selfmoa run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def _wait(what: str, timeout: float, check: Callable[[], Any], period: float = 1.0) -> Any:
    return rc.wait_until(what, timeout, check, period)


def run_cluster(example: Path, work: Path, keep: Path | None) -> dict[str, Any]:
    """The example on the real control plane: timings, per-stage rows, requests, RSS."""
    out: dict[str, Any] = {}
    t = time.monotonic()
    cluster = rc.start_cluster(work / "controlplane")
    out["start_s"] = time.monotonic() - t
    try:
        with rc.s3_server() as s3, rc.kubelet_player(cluster, work / "nodes"):
            t = time.monotonic()
            chart = rc.install_chart(cluster, {}, work / "chart")
            ns = rc.prepare_run_namespace(cluster, s3)
            op = rc.start_operator(cluster, chart, s3, work / "operator")
            try:
                rc.wait_listening(cluster, op)
                out["install_s"] = time.monotonic() - t
                out.update(_timed_run(cluster, op, example, ns, s3))
            finally:
                out["operator_peak_rss_mib"] = op.peak_rss_mib()
                op.stop()
    finally:
        rc.stop_cluster(cluster, (keep / "controlplane-logs") if keep else None)
    return out


def _timed_run(
    cluster: rc.Cluster,
    op: rc.OperatorProcess,
    example: Path,
    ns: str,
    s3: dict[str, str],
) -> dict[str, Any]:
    doc = yaml.safe_load(example.read_text())
    doc["metadata"]["namespace"] = ns
    doc["spec"]["storage"] = rc.s3_storage(s3)
    name = doc["metadata"]["name"]
    applied = time.time()
    t = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

    def finished() -> dict[str, Any] | None:
        proc = cluster.kubectl("-n", ns, "get", "arun", name, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(proc.stdout).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = _wait(f"{name} to finish", 3600, finished, 1.0)
    seconds = time.monotonic() - t
    if status.get("phase") != "Succeeded":
        raise RuntimeError(
            f"{name}: {status.get('phase')}: {json.dumps(status)[:2000]}\n{op.text()[-2000:]}"
        )
    done = time.time()
    jobs = rc.children(cluster, "jobs", name)
    pods = rc.children(cluster, "pods", name)
    events = rc.operator_requests(cluster)
    return {
        "name": name,
        "cluster_s": seconds,
        "stages": stage_rows(jobs, pods, events, applied, done),
        "requests": len({e["auditID"] for e in events}),
        "requests_run": len(
            {
                e["auditID"]
                for e in events
                if (_ts(e.get("requestReceivedTimestamp")) or 0) >= applied
            }
        ),
    }


def stage_rows(
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    events: list[dict[str, Any]],
    applied: float,
    done: float,
) -> list[dict[str, Any]]:
    """One row per stage Job in creation order: Pod run time, the operator's delay before the
    next Job, and the operator's API requests from this Job's creation to the next one's."""
    jobs = sorted(jobs, key=lambda j: _ts(j["metadata"]["creationTimestamp"]) or 0)
    by_job: dict[str, dict[str, Any]] = {}
    for pod in pods:
        owner = (pod["metadata"].get("labels") or {}).get("job-name")
        if owner:
            by_job[owner] = pod
    received = sorted(
        {e["auditID"]: _ts(e.get("requestReceivedTimestamp")) or 0 for e in events}.values()
    )
    created = [_ts(j["metadata"]["creationTimestamp"]) or 0 for j in jobs]
    rows = [
        {
            "stage": "(before the first Job)",
            "requests": sum(1 for r in received if applied <= r < (created or [done])[0]),
        }
    ]
    for i, job in enumerate(jobs):
        labels = job["metadata"].get("labels") or {}
        start = created[i]
        end = created[i + 1] if i + 1 < len(created) else done + 1
        pod = by_job.get(job["metadata"]["name"]) or {}
        term: dict[str, Any] = {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
        run_s = None
        if term.get("startedAt") and term.get("finishedAt"):
            run_s = (_ts(term["finishedAt"]) or 0) - (_ts(term["startedAt"]) or 0)
        completed = _ts((job.get("status") or {}).get("completionTime"))
        rows.append(
            {
                "stage": f"i{labels.get(LABEL_ITERATION, '?')} {labels.get(LABEL_STAGE, '?')}",
                "pod_s": run_s,
                "job_s": (completed - start) if completed else None,
                # Job complete -> next Job created (or -> Succeeded for the last one).
                "next_s": ((created[i + 1] if i + 1 < len(created) else done) - completed)
                if completed
                else None,
                "requests": sum(1 for r in received if start <= r < end),
            }
        )
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--example", type=Path, default=EXAMPLE, help="AlignmentRun file (tiny-cpu)")
    p.add_argument("--skip-cluster", action="store_true", help="only the local run")
    p.add_argument("--skip-local", action="store_true", help="only the cluster run")
    p.add_argument("--no-build", action="store_true", help="never build the control plane")
    p.add_argument("--keep", type=Path, help="keep the work dir's logs (Pod dirs, audit) here")
    args = p.parse_args(argv)
    if not args.example.is_file():
        print(f"bench_cluster: {args.example}: no such file")
        return 2
    cluster_ok = not args.skip_cluster
    if cluster_ok and not rc.built():
        if args.no_build:
            print("bench_cluster: control plane not built (make test-cluster builds it); skipped")
            cluster_ok = False
        else:
            build = subprocess.run(["bash", str(rc.SCRIPT), "build"], check=False)
            if build.returncode != 0:
                print("bench_cluster: the control plane is not built and can't be here; skipped")
                cluster_ok = False
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    local_s = None
    if not args.skip_local:
        local_s = run_local(args.example, work / "local")
        print(f"local   selfmoa run {args.example.name}: {local_s:.1f} s (cold model cache)")
    if not cluster_ok:
        return 0
    r = run_cluster(args.example, work / "cluster", args.keep)
    print(
        f"cluster {r['name']} apply -> Succeeded: {r['cluster_s']:.1f} s "
        f"(control plane start {r['start_s']:.0f} s, chart + operator {r['install_s']:.0f} s, "
        "not counted)"
    )
    if local_s:
        print(f"ratio   cluster / local: {r['cluster_s'] / local_s:.2f}x (issue #14's bar: 2x)")
    print(f"\n{'stage Job':<24} {'pod s':>6} {'job s':>6} {'-> next s':>9} {'API requests':>13}")
    for row in r["stages"]:
        print(
            f"{row['stage']:<24} {_fmt(row.get('pod_s')):>6} {_fmt(row.get('job_s')):>6} "
            f"{_fmt(row.get('next_s')):>9} {row['requests']:>13}"
        )
    print(
        f"\noperator: {r['requests_run']} API requests during the run "
        f"({r['requests']} since its start), peak RSS {r['operator_peak_rss_mib']:.0f} MiB"
    )
    print(
        "(pod s: the stage container's run time; job s: Job created -> complete; -> next s: "
        "Job complete -> next Job created, the last -> run Succeeded; whole seconds from the API; "
        "requests: the operator's audited requests, each watch once, from the Job's creation "
        "to the next one's)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
