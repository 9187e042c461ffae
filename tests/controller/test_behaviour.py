"""Failure, invalid specs, suspend/resume, delete, and vLLM serving, through the real operator."""

from __future__ import annotations

import asyncio
import json

from harness import (
    DEPLOYMENTS,
    JOBS_PATH,
    NS,
    RUNS,
    RUNS_PATH,
    SERVICES,
    Cluster,
    Operator,
    apply,
    complete_job,
    condition,
    container,
    events,
    fail_job,
    job_finished,
    jobs,
    mark_deployments_ready,
    objects,
    patch_spec,
    play_one,
    play_stand_ins,
    run_status,
    stand_in_stage,
    tiny_run,
    validate_all,
    wait_for,
)

from selfmoa.controller.builders import serving_name
from selfmoa.run import layout
from selfmoa.store import open_store


async def test_job_failure_fails_the_run_with_the_pod_message(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    await play_stand_ins(cluster, 4)  # reset, evaluate(0), redteam, respond
    await wait_for(lambda: "r-i1-judge" in jobs(cluster))
    await fail_job(cluster, "r-i1-judge", "judge: model org/missing not found", attempts=2)
    st = await wait_for(
        lambda: run_status(cluster, "r").get("phase") == "Failed" and run_status(cluster, "r")
    )
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "StageFailed"
    assert "stage judge of iteration 1" in failed["message"]
    assert "judge: model org/missing not found" in failed["message"]
    assert st["attempts"] == {"iter-001/judge": 2}
    assert condition(st, "Progressing") is None
    await wait_for(lambda: events(cluster, "StageFailed"))
    await asyncio.sleep(0.3)
    assert "r-i1-pairs" not in jobs(cluster)  # nothing after a failed stage
    validate_all(cluster)


async def test_invalid_spec_fails_once_naming_the_field(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    run = tiny_run(
        "bad",
        tmp_path,
        judges=[
            {"name": "a", "objective": "safety"},
            {"name": "a", "objective": "helpfulness"},
        ],
    )
    await apply(cluster, run)
    st = await wait_for(
        lambda: run_status(cluster, "bad").get("phase") == "Failed" and run_status(cluster, "bad")
    )
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.judges"), failed["message"]
    obj = cluster.objects[RUNS, NS, "bad"].raw
    # Kopf's finalizer lives under our group.
    assert "selfmoa.dev/finalizer" in obj["metadata"]["finalizers"]
    await asyncio.sleep(0.5)  # let Kopf finish its own bookkeeping
    patches = sum(1 for m, _, n in cluster.calls if m == "PATCH" and n == "bad")
    await asyncio.sleep(1.5)
    later = sum(1 for m, _, n in cluster.calls if m == "PATCH" and n == "bad")
    assert later == patches, "an invalid spec must not be retried in a loop"
    assert jobs(cluster) == {}
    # Fixing the spec (a new generation) starts the run.
    await patch_spec(
        cluster,
        "bad",
        {
            "judges": [
                {"name": "a", "objective": "safety"},
                {"name": "b", "objective": "helpfulness"},
            ]
        },
    )
    await wait_for(lambda: "bad-i0-reset" in jobs(cluster))


async def test_schema_invalid_field_is_named(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    run = tiny_run("typo", tmp_path)
    run["spec"]["sampling"]["responsesPerPromt"] = 3
    await apply(cluster, run)
    st = await wait_for(
        lambda: run_status(cluster, "typo").get("phase") == "Failed" and run_status(cluster, "typo")
    )
    assert "spec.sampling.responsesPerPromt" in condition(st, "Failed")["message"]


async def test_suspend_pauses_between_stages_and_resume_continues(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path, suspend=True))
    st = await wait_for(
        lambda: run_status(cluster, "r").get("phase") == "Suspended" and run_status(cluster, "r")
    )
    assert jobs(cluster) == {}
    assert condition(st, "Progressing") is None
    await patch_spec(cluster, "r", {"suspend": False})
    await wait_for(lambda: "r-i0-reset" in jobs(cluster))
    # Suspend while a stage runs: it finishes, the next one does not start.
    await patch_spec(cluster, "r", {"suspend": True})
    await asyncio.sleep(0.3)
    await play_one(cluster, stand_in_stage)
    st = await wait_for(
        lambda: run_status(cluster, "r").get("phase") == "Suspended" and run_status(cluster, "r")
    )
    assert "before stage evaluate of iteration 0" in st["message"]
    assert sorted(jobs(cluster)) == ["r-i0-reset"]
    await patch_spec(cluster, "r", {"suspend": False})
    await wait_for(lambda: "r-i0-evaluate" in jobs(cluster))


async def test_delete_removes_children_and_keeps_artifacts(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    await play_stand_ins(cluster, 2)
    await wait_for(lambda: "r-i1-redteam" in jobs(cluster))
    async with cluster.delete(f"{RUNS_PATH}/r") as resp:
        assert resp.status < 400
    await wait_for(
        lambda: (RUNS, NS, "r") not in cluster.objects or cluster.objects[RUNS, NS, "r"].deleted
    )
    assert jobs(cluster) == {}
    store = open_store(f"file://{tmp_path}/ml/r")
    assert store.exists(layout.manifest_key(0, "evaluate"))


def _vllm_run(tmp_path) -> dict:
    return tiny_run(
        "v",
        tmp_path,
        policy={"model": "org/policy-0.5b"},
        safetyReset={"enabled": False},
        redTeam={"model": "org/red-1b", "promptsPerIteration": 24},
        judges=[
            {"name": "guard", "objective": "safety", "kind": "llm", "model": "org/judge-1b"},
            {"name": "helper", "objective": "helpfulness", "kind": "llm", "model": "org/judge-1b"},
        ],
        iterations=1,
        serving={
            "engine": "vllm",
            "releaseDuringTraining": True,
            "gpusPerModel": 1,
            "hfTokenSecretRef": "hf",
        },
        trainer={"gpus": 1, "backoffLimit": 1},
        storage={"uri": f"file://{tmp_path}", "secretRef": "s3-creds"},
    )


async def test_vllm_serving_per_model_scaled_to_zero_around_training(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    await apply(cluster, _vllm_run(tmp_path))
    models = ["org/policy-0.5b", "org/red-1b", "org/judge-1b"]
    names = {serving_name("v", m) for m in models}
    await wait_for(lambda: set(objects(cluster, DEPLOYMENTS)) == names)
    await wait_for(lambda: set(objects(cluster, SERVICES)) == names)
    policy = objects(cluster, DEPLOYMENTS)[serving_name("v", "org/policy-0.5b")]
    args = policy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-lora" in args
    # No stage starts before its servers are ready.
    await asyncio.sleep(0.3)
    assert jobs(cluster) == {}
    assert run_status(cluster, "v")["conditions"][0]["reason"] == "ServingNotReady"
    await mark_deployments_ready(cluster)
    await wait_for(lambda: "v-i0-evaluate" in jobs(cluster))
    env = {e["name"]: e for e in container(jobs(cluster)["v-i0-evaluate"])["env"]}
    endpoints = json.loads(env["SELFMOA_ENDPOINTS"]["value"])
    assert set(endpoints) == set(models)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"

    replicas_at_train: dict[str, int] = {}
    for _ in range(5):  # evaluate(0), redteam, respond, judge, pairs
        await wait_for(lambda: any(not job_finished(j) for j in jobs(cluster).values()))
        await play_one(cluster, stand_in_stage)
        await mark_deployments_ready(cluster)
    await wait_for(lambda: "v-i1-train" in jobs(cluster))
    replicas_at_train = {n: d["spec"]["replicas"] for n, d in objects(cluster, DEPLOYMENTS).items()}
    assert set(replicas_at_train.values()) == {0}, replicas_at_train
    train = container(jobs(cluster)["v-i1-train"])
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "1"
    await mark_deployments_ready(cluster)  # the servers' pods go away
    stand_in_stage(list(train["args"]), {})
    await complete_job(cluster, "v-i1-train")
    await wait_for(
        lambda: {d["spec"]["replicas"] for d in objects(cluster, DEPLOYMENTS).values()} == {1}
    )
    await asyncio.sleep(0.2)
    assert "v-i1-evaluate" not in jobs(cluster)  # waits for the restored servers
    await mark_deployments_ready(cluster)
    await wait_for(lambda: "v-i1-evaluate" in jobs(cluster))
    await play_one(cluster, stand_in_stage)
    st = await wait_for(
        lambda: run_status(cluster, "v").get("phase") == "Succeeded" and run_status(cluster, "v")
    )
    assert [i["index"] for i in st["iterations"]] == [0, 1]
    # Done: GPUs given back.
    await wait_for(
        lambda: {d["spec"]["replicas"] for d in objects(cluster, DEPLOYMENTS).values()} == {0}
    )
    assert validate_all(cluster) == 7 + 2 * 3
    assert JOBS_PATH


async def test_a_serving_spec_change_rolls_the_deployments(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    from selfmoa.controller.builders import spec_hash_of

    await apply(cluster, _vllm_run(tmp_path))
    name = serving_name("v", "org/policy-0.5b")
    await wait_for(lambda: name in objects(cluster, DEPLOYMENTS))
    before = spec_hash_of(objects(cluster, DEPLOYMENTS)[name])
    await patch_spec(cluster, "v", {"serving": {"engine": "vllm", "extraArgs": ["--seed", "7"]}})
    after = await wait_for(
        lambda: (
            spec_hash_of(objects(cluster, DEPLOYMENTS)[name]) != before
            and objects(cluster, DEPLOYMENTS)[name]
        )
    )
    args = after["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--seed", "7"]
    # The edit is allowed mid-run (serving is not fixed at the start).
    assert "SpecChangeRefused" not in (run_status(cluster, "v").get("message") or "")


async def test_a_crashing_serving_pod_says_why_in_the_runs_status(
    cluster: Cluster, operator: Operator, tmp_path
) -> None:
    from harness import now

    await apply(cluster, _vllm_run(tmp_path))
    name = serving_name("v", "org/policy-0.5b")
    dep = await wait_for(lambda: objects(cluster, DEPLOYMENTS).get(name))
    # What the kubelet shows for an init container that keeps failing: the model is not in
    # the cache volume (its one line, from the termination-message file).
    line = "fetch: error: org/policy-0.5b@main is not in PVC models: seed it first"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-7d9f-x",
            "namespace": NS,
            "labels": dict(dep["spec"]["selector"]["matchLabels"]),
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "check-model",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "message": line, "finishedAt": now()}
                    },
                }
            ],
        },
    }
    async with cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod) as resp:
        assert resp.status < 400, await resp.text()
    st = await wait_for(
        lambda: (
            "check-model failed" in (run_status(cluster, "v").get("message") or "")
            and run_status(cluster, "v")
        )
    )
    assert st["phase"] == "Running" and jobs(cluster) == {}
    assert st["conditions"][0]["reason"] == "ServingNotReady"
    assert f"pod {name}-7d9f-x: init container check-model failed: {line}" in st["message"]
