"""Runs that can't make progress say why: reconcile errors and queue holds, in status."""

from __future__ import annotations

import pytest
from harness import (
    Cluster,
    Operator,
    apply,
    condition,
    events,
    jobs,
    patch_spec,
    play_one,
    run_status,
    stand_in_stage,
    tiny_run,
    wait_for,
)

from selfmoa.api import SpecError
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller.children import pod_problem, queue_hold
from selfmoa.controller.failures import StorageConfigError, classify
from selfmoa.controller.kube import KubeError
from selfmoa.run.planner import Observed, Wait, next_action
from selfmoa.store import StoreError, StoreUnavailable


def test_classify_tells_permanent_from_transient() -> None:
    table = [
        (
            KubeError(422, "Job.batch is invalid: spec.template.spec.containers"),
            "ChildRejected",
            True,
        ),
        (KubeError(400, "quantities must match the regular expression"), "ChildRejected", True),
        (KubeError(403, "jobs.batch is forbidden"), "Forbidden", False),
        (KubeError(503, "etcdserver: leader changed"), "ApiError", False),
        (StorageConfigError("s3:///p: no bucket"), "InvalidStorage", True),
        (
            StoreUnavailable("cannot reach S3 endpoint http://127.0.0.1:1"),
            "StorageUnavailable",
            False,
        ),
        (StoreError("bucket b does not exist"), "StorageRefused", False),
        (SpecError("spec.judges: duplicate"), "InvalidSpec", True),
        (ConnectionRefusedError(111, "refused"), "ApiUnavailable", False),
        (RuntimeError("boom\nsecond line"), "ReconcileError", False),
    ]
    for exc, reason, permanent in table:
        b = classify(exc)
        assert (b.reason, b.permanent) == (reason, permanent), exc
        assert "\n" not in b.message and b.message


def test_a_suspended_job_is_waiting_not_failed() -> None:
    job = {
        "metadata": {"labels": {"kueue.x-k8s.io/queue-name": "gpu"}},
        "spec": {"suspend": True},
        "status": {},
    }
    reason, message = queue_hold(job, (1, "train")) or ("", "")
    assert reason == "WaitingForAdmission" and "queue gpu" in message
    job["status"] = {"startTime": "2026-12-01T00:00:00Z"}
    assert (queue_hold(job, (1, "train")) or ("",))[0] == "Preempted"
    assert queue_hold({"spec": {"suspend": False}}, (1, "train")) is None
    spec = AlignmentRunSpec.model_validate({"policy": {"model": "m"}})
    held = Observed(running=(0, "evaluate"), held=("WaitingForAdmission", "waits"))
    assert next_action(spec, held) == Wait("WaitingForAdmission", "waits")


def test_a_serving_pods_problem_is_what_its_kubelet_reports() -> None:
    def pod(**status: object) -> dict[str, object]:
        return {"metadata": {"name": "p"}, "status": status}

    def term(message: str, at: str, code: int = 1) -> dict[str, object]:
        return {"terminated": {"exitCode": code, "message": message, "finishedAt": at}}

    assert pod_problem(pod(phase="Pending")) is None
    starting = {"name": "vllm", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_problem(pod(containerStatuses=[starting])) is None
    ok = {"name": "fetch-model", "state": term("", "t1", code=0)}
    assert pod_problem(pod(initContainerStatuses=[ok])) is None
    # A crash loop: the last failure's last line, the newest across containers.
    crashing = {
        "name": "fetch-model",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": term("traceback...\nfetch: error: no such bucket", "2026-01-01T00:00:02Z"),
    }
    older = {"name": "vllm", "state": term("CUDA out of memory", "2026-01-01T00:00:01Z")}
    assert pod_problem(pod(initContainerStatuses=[crashing], containerStatuses=[older])) == (
        "pod p: init container fetch-model failed: fetch: error: no such bucket"
    )
    bare = {"name": "vllm", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    assert pod_problem(pod(containerStatuses=[bare])) == (
        "pod p: container vllm failed: OOMKilled, exit code 137"
    )
    pull = {
        "name": "vllm",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling x"}},
    }
    assert pod_problem(pod(containerStatuses=[pull])) == (
        "pod p: container vllm ImagePullBackOff: Back-off pulling x"
    )
    # No node with the GPUs it asks for: the scheduler's words, not a bare "waiting".
    unscheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
    }
    assert pod_problem(pod(phase="Pending", conditions=[unscheduled])) == (
        "pod p: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )


async def test_a_store_no_one_can_open_fails_the_run_saying_why(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    run = tiny_run("nobucket", tmp_path)
    run["spec"]["storage"] = {"uri": "s3:///prefix"}
    await apply(cluster, run)
    st = await wait_for(
        lambda: (
            run_status(cluster, "nobucket").get("phase") == "Failed"
            and run_status(cluster, "nobucket")
        )
    )
    failed = condition(st, "Failed")
    # The spec itself refuses a URI without a bucket, as `selfmoa validate` does.
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.storage.uri: 's3:///prefix' must be file://PATH")
    await wait_for(lambda: events(cluster, "InvalidSpec"))
    assert jobs(cluster) == {}


async def test_an_unreachable_store_keeps_retrying_and_says_so(
    cluster: Cluster, operator: Operator, tmp_path, aws_env: None
) -> None:
    run = tiny_run("down", tmp_path)
    run["spec"]["storage"] = {"uri": "s3://bucket/p", "endpoint": "http://127.0.0.1:1"}
    await apply(cluster, run)
    st = await wait_for(
        lambda: (
            "retrying" in (run_status(cluster, "down").get("message") or "")
            and run_status(cluster, "down")
        ),
        timeout=60,
    )
    assert st["phase"] == "Running"
    progressing = condition(st, "Progressing")
    assert progressing is not None and progressing["reason"] == "StorageUnavailable"
    assert jobs(cluster) == {}


async def test_a_fixed_field_edited_mid_run_is_refused_until_reverted(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("edit", tmp_path))
    await wait_for(lambda: "edit-i0-reset" in jobs(cluster))
    await patch_spec(cluster, "edit", {"sampling": {"responsesPerPrompt": 3}})
    await play_one(cluster, stand_in_stage)  # the running stage may finish
    st = await wait_for(
        lambda: (
            (run_status(cluster, "edit").get("message") or "").startswith("spec.sampling")
            and run_status(cluster, "edit")
        )
    )
    assert "changed after the run started" in st["message"]
    await wait_for(lambda: events(cluster, "SpecChangeRefused"))
    assert sorted(jobs(cluster)) == ["edit-i0-reset"]  # nothing new starts meanwhile
    # A field that may change (more iterations) is taken; reverting the fixed one resumes.
    await patch_spec(cluster, "edit", {"sampling": {"responsesPerPrompt": 2}, "iterations": 3})
    await wait_for(lambda: "edit-i0-evaluate" in jobs(cluster))


async def test_a_missing_storage_secret_is_named_while_the_run_waits(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    run = tiny_run("nosecret", tmp_path)
    run["spec"]["storage"] = {"uri": "s3://bucket/p", "secretRef": "s3-creds"}
    await apply(cluster, run)
    st = await wait_for(
        lambda: (
            "retrying" in (run_status(cluster, "nosecret").get("message") or "")
            and run_status(cluster, "nosecret")
        )
    )
    assert "Secret 's3-creds' not found in namespace ml" in st["message"]
    assert jobs(cluster) == {}


async def test_a_frozen_api_server_ends_a_request_within_its_bound() -> None:
    # An API server that accepts connections and never answers: each request gives up after
    # its timeout, all tries within `worst_case_seconds`, and the reconcile says ApiUnavailable.
    import socket
    import time
    from types import SimpleNamespace

    from selfmoa.controller.kube import ATTEMPTS, Kube

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    info = SimpleNamespace(
        server=f"http://127.0.0.1:{sock.getsockname()[1]}",
        token=None,
        username=None,
        password=None,
        scheme=None,
    )
    kube = Kube(lambda: info, timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError) as err:
            await kube.get("/api/v1/namespaces/default/pods/x")
    finally:
        await kube.close()
        sock.close()
    took = time.monotonic() - started
    assert ATTEMPTS * 0.5 <= took <= kube.worst_case_seconds() + 0.5, took
    assert classify(err.value).reason == "ApiUnavailable"
    assert not classify(err.value).permanent
