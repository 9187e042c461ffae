"""spec.suspend on the real server: a run suspended mid-stage finishes that stage, starts no
next Job while suspended (phase Suspended), and resumes to Succeeded without a duplicate Job;
status.observedGeneration follows metadata.generation through both edits.

(Job `suspend` itself is Kubernetes 1.21; the run's suspend is the operator's own: it pauses
between stages, so it works on this 1.20 server.)
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from realcluster import (
    RUN_NS,
    Cluster,
    OperatorProcess,
    children,
    get_run,
    measure,
    small_run,
    wait_until,
)


def _suspend(cluster: Cluster, name: str, value: bool) -> int:
    """Patch spec.suspend as a user would; the run's new metadata.generation."""
    cluster.kubectl(
        "-n",
        RUN_NS,
        "patch",
        "arun",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": value}}),
    )
    return int(get_run(cluster, name)["metadata"]["generation"])


def _stage_keys(jobs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(
        (
            j["metadata"]["labels"]["selfmoa.dev/iteration"],
            j["metadata"]["labels"]["selfmoa.dev/stage"],
        )
        for j in jobs
    )


def _finished(job: dict[str, Any]) -> bool:
    st = job.get("status") or {}
    return bool(st.get("succeeded") or st.get("failed"))


@pytest.mark.slow_cluster
@pytest.mark.timeout(2400)
def test_suspend_mid_stage_then_resume(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    t0 = time.monotonic()
    name = "suspend-probe"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run(name, s3)))
    wait_until(
        "the first stage Pod to run",
        600,
        lambda: any(p["status"].get("phase") == "Running" for p in children(cluster, "pods", name)),
    )
    # Suspend while the stage runs: the running stage is not cut short (its Job is the
    # operator's, not suspended), and the status says which generation it acted on.
    gen = _suspend(cluster, name, True)
    at_suspend = children(cluster, "jobs", name)
    assert len(at_suspend) == 1 and not _finished(at_suspend[0]), (
        "not mid-stage when suspended: " + repr(_stage_keys(at_suspend))
    )
    wait_until(
        f"status.observedGeneration {gen} (suspend)",
        60,
        lambda: (get_run(cluster, name).get("status") or {}).get("observedGeneration") == gen,
    )
    status = wait_until(
        f"{name} to be Suspended after its first stage",
        900,
        lambda: (s := get_run(cluster, name).get("status") or {}).get("phase") == "Suspended" and s,
        2,
    )
    # The run is Suspended once the stage's manifest is in the store; the Pod exits and the
    # job controller counts it a moment later. It must count it a success: not cut short.
    jobs = wait_until(
        "the suspended run's one Job to succeed",
        120,
        lambda: (js := children(cluster, "jobs", name)) and all(_finished(j) for j in js) and js,
    )
    assert len(jobs) == 1 and (jobs[0].get("status") or {}).get("succeeded") == 1, [
        (j["metadata"]["name"], j.get("status")) for j in jobs
    ]
    assert "suspended before stage" in status.get("message", ""), status
    assert status.get("observedGeneration") == gen, status
    # Held: several operator wake-ups later (Job watch events, its periodic resync), still no
    # second Job and still Suspended.
    time.sleep(15)
    assert _stage_keys(children(cluster, "jobs", name)) == _stage_keys(jobs)
    assert (get_run(cluster, name).get("status") or {}).get("phase") == "Suspended"
    measure(f"scenario {name}: suspended after, s", round(time.monotonic() - t0, 1))

    # Resume: the next stage starts, the generation is observed, the run finishes.
    gen = _suspend(cluster, name, False)
    wait_until(
        "a second Job after resuming",
        120,
        lambda: len(children(cluster, "jobs", name)) >= 2,
    )
    wait_until(
        f"status.observedGeneration {gen} (resume)",
        60,
        lambda: (get_run(cluster, name).get("status") or {}).get("observedGeneration") == gen,
    )

    def finished() -> dict[str, Any] | None:
        st: dict[str, Any] = get_run(cluster, name).get("status") or {}
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(f"{name} to finish", 2000, finished, 5)
    assert status["phase"] == "Succeeded", (
        f"{json.dumps(status, indent=1)[:3000]}\noperator log tail:\n{operator.text()[-3000:]}"
    )
    assert (
        status.get("observedGeneration") == gen == get_run(cluster, name)["metadata"]["generation"]
    )
    # One Job per (iteration, stage): suspending and resuming made no duplicate.
    keys = _stage_keys(children(cluster, "jobs", name))
    assert len(keys) == len(set(keys)) == 7, keys
    measure(f"scenario {name} (suspend + resume) to Succeeded, s", round(time.monotonic() - t0, 1))
