"""Failures that tell the truth through the operator: a stage Pod's exit code becomes the run's
condition reason, and a new AlignmentRun that finds an earlier run's stages says so (or starts
fresh when asked)."""

from __future__ import annotations

import pytest
from harness import (
    JOBS_PATH,
    NS,
    RUNS,
    RUNS_PATH,
    Cluster,
    Operator,
    apply,
    condition,
    events,
    fail_job,
    job_finished,
    jobs,
    patch_status,
    play_stand_ins,
    post_stage_pod,
    run_status,
    tiny_run,
    wait_for,
)

from selfmoa.api.exits import Exit
from selfmoa.run import layout
from selfmoa.run.identity import FRESH_START_ANNOTATION
from selfmoa.store import open_store


async def _fail_redteam(cluster: Cluster, tmp_path, exit_code: int) -> None:
    """Run "r" up to iteration 1's red team, whose Job then fails with `exit_code`."""
    await apply(cluster, tiny_run("r", tmp_path))
    await play_stand_ins(cluster, 2)  # reset, evaluate(0)
    await wait_for(lambda: "r-i1-redteam" in jobs(cluster))
    await fail_job(cluster, "r-i1-redteam", "S3 endpoint stopped answering", 2, exit_code)
    await wait_for(lambda: run_status(cluster, "r").get("phase") == "Failed")


@pytest.mark.parametrize(
    ("code", "reason", "advice"),
    [
        (Exit.UNAVAILABLE, "EnvironmentUnavailable", "retryable"),
        (Exit.BAD_INPUT, "InvalidInput", "fix the input"),
        (Exit.FAILED, "StageFailed", None),
    ],
)
async def test_the_pods_exit_code_is_the_runs_reason(
    cluster: Cluster, operator: Operator, tmp_path, code: int, reason: str, advice: str | None
) -> None:
    await _fail_redteam(cluster, tmp_path, code)
    st = run_status(cluster, "r")
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == reason
    assert "stage redteam of iteration 1 failed: S3 endpoint stopped answering" in failed["message"]
    assert (advice in failed["message"]) if advice else "(" not in failed["message"]
    await wait_for(lambda: events(cluster, reason))


async def test_a_run_failed_by_an_outage_goes_on_once_its_job_is_deleted(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await _fail_redteam(cluster, tmp_path, Exit.UNAVAILABLE)
    async with cluster.delete(f"{JOBS_PATH}/r-i1-redteam") as resp:
        assert resp.status < 400
    # The stage runs again (a new Job), and the run is Running again.
    await wait_for(
        lambda: (
            "r-i1-redteam" in jobs(cluster)
            and not job_finished(jobs(cluster)["r-i1-redteam"])
            and run_status(cluster, "r").get("phase") == "Running"
        )
    )
    await play_stand_ins(cluster, 1)
    await wait_for(lambda: "r-i1-respond" in jobs(cluster))


async def test_a_run_failed_by_its_stage_stays_failed_when_its_job_is_deleted(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    import asyncio

    await _fail_redteam(cluster, tmp_path, Exit.FAILED)
    async with cluster.delete(f"{JOBS_PATH}/r-i1-redteam") as resp:
        assert resp.status < 400
    await asyncio.sleep(0.5)
    assert "r-i1-redteam" not in jobs(cluster)
    assert run_status(cluster, "r").get("phase") == "Failed"


async def _delete(cluster: Cluster, name: str) -> None:
    async with cluster.delete(f"{RUNS_PATH}/{name}") as resp:
        assert resp.status < 400
    await wait_for(
        lambda: (RUNS, NS, name) not in cluster.objects or cluster.objects[RUNS, NS, name].deleted
    )


async def test_a_new_run_with_an_earlier_ones_name_reuses_its_stages_visibly(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    await play_stand_ins(cluster, 3)  # reset, evaluate(0), redteam(1)
    await wait_for(lambda: "r-i1-respond" in jobs(cluster))
    first_uid = cluster.objects[RUNS, NS, "r"]["metadata"]["uid"]
    await _delete(cluster, "r")

    await apply(cluster, tiny_run("r", tmp_path))
    st = await wait_for(
        lambda: condition(run_status(cluster, "r"), "StagesReused") and run_status(cluster, "r")
    )
    reused = condition(st, "StagesReused")
    assert reused is not None and reused["status"] == "True"
    assert reused["message"].startswith("3 finished stage(s) reused from AlignmentRun ml/r")
    assert first_uid in reused["message"]
    (event,) = events(cluster, "StagesReused")
    assert "fresh-start" in event["message"]
    # It went on where the earlier run stopped: no stage ran twice.
    await wait_for(lambda: "r-i1-respond" in jobs(cluster))
    assert not {"r-i0-reset", "r-i0-evaluate", "r-i1-redteam"} & set(jobs(cluster))


async def test_a_fresh_start_deletes_the_earlier_runs_artifacts_first(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    await play_stand_ins(cluster, 2)
    await wait_for(lambda: "r-i1-redteam" in jobs(cluster))
    await _delete(cluster, "r")
    store = open_store(f"file://{tmp_path}/ml/r")
    assert store.exists(layout.manifest_key(0, "evaluate"))

    run = tiny_run("r", tmp_path)
    run["metadata"]["annotations"] = {FRESH_START_ANNOTATION: "true"}
    await apply(cluster, run)
    await wait_for(lambda: events(cluster, "StartedFresh"))
    await wait_for(lambda: "r-i0-reset" in jobs(cluster))
    assert not store.exists(layout.manifest_key(0, "evaluate"))
    assert condition(run_status(cluster, "r"), "StagesReused") is None
    # A restarted reconcile of the same object never deletes its own stages.
    await play_stand_ins(cluster, 1)
    await wait_for(lambda: "r-i0-evaluate" in jobs(cluster))
    assert store.exists(layout.manifest_key(0, "reset"))
    assert len(events(cluster, "StartedFresh")) == 1


async def _stuck_first_stage(cluster: Cluster, tmp_path, waiting: dict[str, str]) -> str:
    """Run "r"'s first Job, created a minute ago, whose Pod waits with `waiting`."""
    import json
    from datetime import UTC, datetime, timedelta

    await apply(cluster, tiny_run("r", tmp_path))
    name = await wait_for(lambda: next(iter(jobs(cluster)), None))
    old = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with cluster.patch(
        f"{JOBS_PATH}/{name}",
        data=json.dumps({"metadata": {"creationTimestamp": old}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status < 400, await resp.text()
    await post_stage_pod(cluster, f"{name}-p", name, "Pending", {"waiting": waiting})
    await patch_status(cluster, f"{JOBS_PATH}/{name}", {"active": 1})
    return str(name)


async def test_a_stage_whose_image_is_missing_ends_the_run_naming_it_and_goes_on_when_fixed(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    never = 'Container image "selfmoa/worker:absent" is not present with pull policy of Never'
    name = await _stuck_first_stage(
        cluster, tmp_path, {"reason": "ErrImageNeverPull", "message": never}
    )
    await wait_for(lambda: run_status(cluster, "r").get("phase") == "Failed")
    failed = condition(run_status(cluster, "r"), "Failed")
    assert failed is not None and failed["reason"] == "StageCannotStart"
    assert "can't start" in failed["message"] and never in failed["message"]
    assert "delete the stage's Job" in failed["message"]
    # Fixed (here: the Job deleted), the stage runs again and the run goes on.
    async with cluster.delete(f"{JOBS_PATH}/{name}") as resp:
        assert resp.status < 400
    await wait_for(
        lambda: name in jobs(cluster) and run_status(cluster, "r").get("phase") == "Running"
    )


async def test_a_stage_no_node_can_take_waits_saying_why(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    import json

    name = await _stuck_first_stage(cluster, tmp_path, {"reason": "ContainerCreating"})
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
    }
    async with cluster.patch(
        f"/api/v1/namespaces/{NS}/pods/{name}-p/status",
        data=json.dumps({"status": {"conditions": [unschedulable]}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status < 400, await resp.text()
    await patch_status(cluster, f"{JOBS_PATH}/{name}", {"active": 1, "startTime": None})
    await wait_for(lambda: "Insufficient cpu" in run_status(cluster, "r").get("message", ""))
    st = run_status(cluster, "r")
    assert st["phase"] == "Running" and "waits for a node" in st["message"]


async def test_a_stage_killed_at_its_memory_limit_says_so(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    name = await wait_for(lambda: next(iter(jobs(cluster)), None))
    # FallbackToLogsOnError: the message is the log's tail, cut off mid-work.
    terminated = {"exitCode": 137, "reason": "OOMKilled", "message": "loading the tiny policy"}
    await post_stage_pod(
        cluster, f"{name}-oom", name, "Failed", {"terminated": terminated},
        resources={"limits": {"memory": "64Mi"}},
    )  # fmt: skip
    await patch_status(
        cluster,
        f"{JOBS_PATH}/{name}",
        {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "x"}]},
    )
    await wait_for(lambda: run_status(cluster, "r").get("phase") == "Failed")
    failed = condition(run_status(cluster, "r"), "Failed")
    assert failed is not None and "OOMKilled" in failed["message"]
    assert "memory limit of 64Mi" in failed["message"]


async def test_a_file_store_no_pod_shares_fails_the_run_at_once_naming_it(tmp_path) -> None:
    # On a cluster a file:// path is a directory inside each Pod: said before any stage runs.
    from selfmoa.api.spec import AlignmentRunSpec
    from selfmoa.controller.config import OperatorConfig
    from selfmoa.controller.reconcile import unshared_store

    spec = AlignmentRunSpec.model_validate({"policy": {"model": "selfmoa/tiny"}})
    problem = unshared_store(spec, OperatorConfig())
    assert problem is not None and problem.startswith("spec.storage.uri: file://./runs")
    assert "s3://" in problem and "config.storage" in problem
    assert unshared_store(spec, OperatorConfig(shared_file_storage=True)) is None
    s3 = AlignmentRunSpec.model_validate(
        {"policy": {"model": "selfmoa/tiny"}, "storage": {"uri": "s3://bkt/runs"}}
    )
    assert unshared_store(s3, OperatorConfig()) is None
