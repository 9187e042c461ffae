"""A stage Pod that exits 1, on the real control plane.

The job controller retries it (backoffLimit), each played Pod reports `state.terminated` with the
exit code and the message the stage wrote to its termination-message path, and the operator
fails the run with a condition naming the stage and carrying that message.

The failure is real and fast: the policy is an `s3://` model prefix that holds nothing, so the
first stage finds no weights in what it downloaded (no tiny base to build first).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from realcluster import (
    RUN_NS,
    Cluster,
    OperatorProcess,
    children,
    final_status,
    measure,
    small_run,
    wait_until,
)


@pytest.mark.timeout(900)
def test_a_failing_stage_fails_the_run_with_its_termination_message(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    t0 = time.monotonic()
    name = "no-model"
    run = small_run(
        name,
        s3,
        policy={"model": f"s3://{s3['bucket']}/no-such-model"},
        evaluation={"goldJudge": False, "maxPrompts": 16},  # the gold judge needs the tiny policy
    )
    run["spec"]["trainer"]["backoffLimit"] = 1
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(run))

    status = wait_until(f"{name} to fail", 800, lambda: final_status(cluster, name), period=2)
    measure(
        f"scenario {name} (stage exits 1, backoffLimit 1) to Failed, s",
        round(time.monotonic() - t0, 1),
    )
    assert status["phase"] == "Failed", status

    # The job controller made 1 + backoffLimit Pods; each one the player ran and reported.
    pods = children(cluster, "pods", name)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    messages = []
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] != 0 and term["reason"] == "Error", term
        assert term.get("message"), f"no termination message: {term}"
        messages.append(term["message"].strip().splitlines()[-1])
    jobs = children(cluster, "jobs", name)
    job_conds = {c["type"]: c for c in jobs[0]["status"].get("conditions") or []}
    assert job_conds["Failed"]["reason"] == "BackoffLimitExceeded", job_conds

    # The run's condition names the stage and carries the stage's own words.
    conds = {c["type"]: c for c in status.get("conditions") or []}
    failed_cond = conds["Failed"]
    assert failed_cond["status"] == "True" and failed_cond["reason"] == "StageFailed", failed_cond
    assert "stage evaluate of iteration 0 failed" in failed_cond["message"], failed_cond
    assert any(m[:80] in failed_cond["message"] for m in messages), (messages, failed_cond)
    measure(f"scenario {name}: termination message", messages[-1][:200])

    # Clean-up only (deletion itself is test_install.py's subject): do not wait on it.
    cluster.kubectl("-n", RUN_NS, "delete", "arun", name, "--wait=false")
