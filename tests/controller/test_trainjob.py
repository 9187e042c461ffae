"""Multi-node training on Kubeflow Trainer (issue 12): the TrainJob builder, checked against the
`kubeflow-trainer-api` models; the executor's TrainJob observation and errors; and runs through
the real operator against a KMock cluster that serves (or doesn't serve) trainer.kubeflow.org."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import kmock
import pydantic
import pytest
from harness import (
    NS,
    Cluster,
    Operator,
    apply,
    condition,
    jobs,
    now,
    objects,
    patch_status,
    play_one,
    run_status,
    stand_in_stage,
    tiny_run,
    wait_for,
)
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob, TrainerV1alpha1TrainJobStatus

from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.cli import build_parser
from selfmoa.controller import builders, reconcile
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.executor import KubernetesExecutor, TrainJobRejected
from selfmoa.controller.failures import classify
from selfmoa.controller.kube import KubeError
from selfmoa.controller.plan import trainer_missing
from selfmoa.controller.runtime import Runtime
from selfmoa.run import stage_table
from selfmoa.run.planner import Observed, RunStage

TRAINJOBS = kmock.resource(f"{builders.TRAINER_API_VERSION}/{builders.TRAINJOB_PLURAL}")
TRAINJOBS_PATH = f"/apis/{builders.TRAINER_API_VERSION}/namespaces/{NS}/trainjobs"
OWNER = {
    "apiVersion": "selfmoa.dev/v1alpha1",
    "kind": "AlignmentRun",
    "metadata": {"name": "r", "namespace": "ml", "uid": "u-1"},
}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _spec(**over: Any) -> AlignmentRunSpec:
    spec = {
        "policy": {"model": "org/p"},
        "trainer": {"gpus": 4, "nodes": 2, "resources": {"cpu": "8", "memory": "64Gi"}},
        "storage": {"uri": "s3://bkt/p", "secretRef": "creds"},
        "serving": {"hfTokenSecretRef": "hf"},
        "queueName": "gpu-queue",
        "priorityClassName": "high",
        **over,
    }
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


def _build(
    spec: AlignmentRunSpec, stage: str = "train", config: OperatorConfig | None = None, **kw: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainJob, the stage Job the run would get on one node) for the same stage."""
    args: dict[str, Any] = {
        "run": "r",
        "namespace": "ml",
        "spec": spec,
        "iteration": 1,
        "stage": stage,
        "parent": 0,
        "config": config or OperatorConfig(),
        "owner": OWNER,
    }
    return builders.train_job(**args, **kw), builders.stage_job(**args)


def _validated(obj: dict[str, Any]) -> TrainerV1alpha1TrainJob:
    """The typed TrainJob; its wire form must be exactly what we built (nothing dropped)."""
    typed = TrainerV1alpha1TrainJob.from_dict(obj)
    assert typed is not None
    assert typed.to_dict() == obj
    return typed


# ------------------------------------------------------------------ the builder


def test_trainjob_carries_the_stage_jobs_container_on_n_nodes() -> None:
    config = OperatorConfig(
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account_name="stage-sa",
    )
    tj, job = _build(_spec(), config=config)
    typed = _validated(tj)
    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert typed.spec is not None and typed.spec.trainer is not None
    assert typed.spec.trainer.num_nodes == 2 and typed.spec.trainer.num_proc_per_node == 4
    # Same name, labels (Kueue's too), parent and owner as the Job it replaces.
    assert tj["metadata"]["name"] == job["metadata"]["name"] == "r-i1-train"
    assert tj["metadata"]["labels"] == job["metadata"]["labels"]
    assert tj["metadata"]["labels"][builders.QUEUE_LABEL] == "gpu-queue"
    assert tj["metadata"]["labels"][builders.PRIORITY_LABEL] == "high"
    assert tj["metadata"]["annotations"] == job["metadata"]["annotations"]
    assert tj["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert tj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    c = job["spec"]["template"]["spec"]["containers"][0]
    trainer = tj["spec"]["trainer"]
    assert trainer["image"] == c["image"]
    assert trainer["args"] == c["args"]
    assert trainer["env"] == c["env"]
    # Per node: the Job's requests/limits, the spec's cpu/memory and all its GPUs.
    assert trainer["resourcesPerNode"] == c["resources"]
    assert trainer["resourcesPerNode"]["limits"][builders.GPU] == "4"
    assert trainer["resourcesPerNode"]["requests"]["cpu"] == "8"
    assert trainer["resourcesPerNode"]["requests"]["memory"] == "64Gi"
    assert tj["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    assert tj["spec"]["activeDeadlineSeconds"] == job["spec"]["activeDeadlineSeconds"]


def test_runtime_patch_puts_the_jobs_pod_settings_on_every_node() -> None:
    config = OperatorConfig(
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account_name="stage-sa",
    )
    tj, job = _build(_spec(), config=config)
    (patch,) = tj["spec"]["runtimePatches"]
    assert patch["manager"] == "selfmoa.dev/operator"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    pod_tpl = node["template"]["spec"]["template"]
    pod = pod_tpl["spec"]
    job_pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == job_pod["securityContext"]
    assert pod["nodeSelector"] == job_pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == job_pod["tolerations"]
    assert pod["serviceAccountName"] == "stage-sa"
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["securityContext"] == job_pod["containers"][0]["securityContext"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"/work": "work", "/dev/shm": "shm"}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    # Pods carry the stage's labels (their failure is found by them); the JobSet's Jobs the run's.
    assert pod_tpl["metadata"]["labels"] == builders.stage_labels("r", 1, "train")
    assert node["template"]["metadata"]["labels"] == {builders.LABEL_RUN: "r"}
    assert builders.pod_selector("r", 1, "train").items() <= pod_tpl["metadata"]["labels"].items()


def test_cpu_nodes_get_one_process_and_no_gpu_or_shm() -> None:
    tj, _ = _build(_spec(trainer={"gpus": 0, "nodes": 3}), stage="reset")
    _validated(tj)
    trainer = tj["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 1
    assert builders.GPU not in trainer["resourcesPerNode"].get("limits", {})
    pod = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["work"]
    assert "nodeSelector" not in pod and "serviceAccountName" not in pod


def test_the_runtime_is_configurable() -> None:
    tj, _ = _build(_spec(), runtime="torch-cuda-251")
    assert _validated(tj).spec.runtime_ref.name == "torch-cuda-251"


def test_models_reject_what_the_api_would() -> None:
    # The round trip is a real check: the models are strict about types and required fields.
    tj, _ = _build(_spec())
    bad = {**tj, "spec": {**tj["spec"], "trainer": {**tj["spec"]["trainer"], "numNodes": "2"}}}
    with pytest.raises(pydantic.ValidationError):
        TrainerV1alpha1TrainJob.from_dict(bad)
    no_ref = {**tj, "spec": {k: v for k, v in tj["spec"].items() if k != "runtimeRef"}}
    with pytest.raises(pydantic.ValidationError):
        TrainerV1alpha1TrainJob.from_dict(no_ref)


def test_argv_is_torchrun_of_the_stage_the_cli_reads() -> None:
    from selfmoa.training import distributed

    tj, _ = _build(_spec())
    trainer = tj["spec"]["trainer"]
    # What the training package would launch for 2 nodes of 4 processes (rendezvous from
    # Trainer's PET_* variables) is what the operator writes.
    assert trainer["command"] + trainer["args"] == distributed.launch_command(
        trainer["args"], nproc=4, nnodes=2
    )
    parsed = build_parser().parse_args(trainer["args"])
    assert (parsed.name, parsed.iteration, parsed.parent) == ("train", 1, 0)


def test_only_training_stages_of_multi_node_runs_are_trainjobs() -> None:
    one, many = _spec(trainer={"gpus": 4}), _spec()
    assert not any(builders.runs_as_trainjob(one, s.name) for s in stage_table.STAGES)
    assert {s.name for s in stage_table.STAGES if builders.runs_as_trainjob(many, s.name)} == {
        s.name for s in stage_table.STAGES if s.trains
    }


@pytest.mark.parametrize("run", ["r", "9run", "a.b.c", "x" * 40, "7" + "y.z" * 30])
def test_trainjob_names_are_dns_labels_jobset_accepts(run: str) -> None:
    name = builders.trainjob_name(run, 12, "train")
    assert DNS1035.match(name) and len(name) <= 47, name
    assert name == builders.trainjob_name(run, 12, "train")
    assert name != builders.trainjob_name(run, 12, "reset")
    # JobSet's longest pod name for 64 nodes still fits a DNS label.
    assert len(f"{name}-node-0-63-abcde") <= 63
    if DNS1035.match(builders.job_name(run, 12, "train")) and len(run) < 20:
        assert name == builders.job_name(run, 12, "train")


def test_the_controller_import_does_not_load_the_trainer_models() -> None:
    code = textwrap.dedent(
        """
        import sys
        import selfmoa.controller.handlers, selfmoa.controller.reconcile
        from selfmoa.controller import builders
        assert "kubeflow_trainer_api" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ the executor (fake API)


class FakeKube:
    """The API calls the executor makes, answered from memory and recorded."""

    def __init__(
        self,
        *,
        served: bool = True,
        trainjobs: list[dict[str, Any]] | None = None,
        list_error: KubeError | None = None,
        create_error: KubeError | None = None,
    ) -> None:
        self.served, self.trainjobs = served, trainjobs or []
        self.list_error, self.create_error = list_error, create_error
        self.calls: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET", path))
        if path == builders.TRAINER_DISCOVERY_PATH and self.served:
            return {"kind": "APIResourceList", "resources": [{"name": "trainjobs"}]}
        return None

    async def list(self, path: str, labels: Any = None) -> list[dict[str, Any]]:
        self.calls.append(("LIST", path))
        if "trainjobs" in path:
            if self.list_error is not None:
                raise self.list_error
            return self.trainjobs
        return []

    async def list_at(self, path: str, labels: Any = None) -> tuple[list[dict[str, Any]], None]:
        return await self.list(path, labels), None

    async def create(self, path: str, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.calls.append(("POST", path))
        if self.create_error is not None:
            raise self.create_error
        self.created.append(obj)
        return obj, True

    async def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PATCH", path))
        self.patches.append(patch)
        return patch

    async def delete(self, path: str) -> bool:
        self.calls.append(("DELETE", path))
        return True


def _runtime(kube: FakeKube) -> Runtime:
    return Runtime(config=OperatorConfig(shared_file_storage=True), kube=cast(Any, kube))


def _local_spec(tmp_path: Path, **trainer: Any) -> AlignmentRunSpec:
    return parse_run(
        {
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"model": "org/p"},
                "safetyReset": {"enabled": True, "data": "reset.jsonl"},
                "storage": {"uri": f"file://{tmp_path}"},
                "trainer": {"gpus": 0, **trainer},
            },
        }
    ).spec


def _executor(rt: Runtime, spec: AlignmentRunSpec) -> KubernetesExecutor:
    return KubernetesExecutor(rt, name="r", namespace=NS, spec=spec, owner=OWNER)


def _trainjob(stage: str, k: int, **status: Any) -> dict[str, Any]:
    """A TrainJob as the API returns it, with a status the Trainer models accept."""
    obj: dict[str, Any] = {
        "metadata": {
            "name": builders.trainjob_name("r", k, stage),
            "labels": {**builders.stage_labels("r", k, stage), builders.QUEUE_LABEL: "gpu"},
        },
        "spec": {"suspend": status.pop("suspend", False)},
        "status": status,
    }
    assert TrainerV1alpha1TrainJobStatus.from_dict(status) is not None
    return obj


def _cond(ctype: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


async def test_single_node_runs_ask_nothing_of_kubeflow_trainer(tmp_path: Path) -> None:
    kube = FakeKube()
    snap = await _executor(_runtime(kube), _local_spec(tmp_path, gpus=2)).observe()
    assert snap.observed.running is None
    assert not [c for c in kube.calls if "trainer.kubeflow.org" in c[1]]


async def test_discovery_is_asked_once_per_operator_process(tmp_path: Path) -> None:
    kube = FakeKube()
    rt = _runtime(kube)
    for _ in range(3):
        await _executor(rt, _local_spec(tmp_path, nodes=2)).observe()
    assert kube.calls.count(("GET", builders.TRAINER_DISCOVERY_PATH)) == 1
    assert kube.calls.count(("LIST", TRAINJOBS_PATH)) == 3


async def test_not_served_fails_before_the_first_stage_and_at_each_training_stage(
    tmp_path: Path,
) -> None:
    kube = FakeKube(served=False)
    spec = _local_spec(tmp_path, nodes=2)
    ex = _executor(_runtime(kube), spec)
    snap = await ex.observe()
    assert not [c for c in kube.calls if c[0] == "LIST" and "trainjobs" in c[1]]

    def missing(spec: AlignmentRunSpec, action: RunStage, observed: Observed) -> str | None:
        runtime = ex.rt.config.training_runtime
        return trainer_missing(spec, action, observed, ex.trainer_served, runtime)

    message = missing(spec, RunStage(0, "reset", 0), snap.observed)
    assert message is not None
    assert "Kubeflow Trainer" in message and "'torch-distributed'" in message
    assert "trainer.nodes: 1" in message and "\n" not in message
    # The run's first stage fails it even when it doesn't train (no work wasted) ...
    assert missing(spec, RunStage(0, "evaluate", 0), snap.observed) is not None
    # ... later, only a training stage does.
    later = Observed(done=frozenset({(0, "reset"), (0, "evaluate")}))
    assert missing(spec, RunStage(1, "redteam", 0), later) is None
    assert missing(spec, RunStage(1, "train", 0), later) is not None
    # One node: never.
    one = _executor(_runtime(FakeKube(served=False)), _local_spec(tmp_path))
    await one.observe()
    assert trainer_missing(one.spec, RunStage(1, "train", 0), later, one.trainer_served, "") is None


async def test_trainjob_conditions_map_to_stage_states(tmp_path: Path) -> None:
    spec = _local_spec(tmp_path, nodes=2)
    held = _trainjob(
        "reset", 0, suspend=True, conditions=[_cond("Suspended", "Suspended", "suspended")]
    )
    snap = await _executor(_runtime(FakeKube(trainjobs=[held])), spec).observe()
    assert snap.observed.running == (0, "reset") and snap.observed.failure is None
    assert snap.observed.held is not None and snap.observed.held[0] == "WaitingForAdmission"
    assert "queue gpu" in snap.observed.held[1]

    running = _trainjob("reset", 0, conditions=[_cond("Suspended", "Resumed", "resumed")])
    running["status"]["conditions"][0]["status"] = "False"
    snap = await _executor(_runtime(FakeKube(trainjobs=[running])), spec).observe()
    assert snap.observed.running == (0, "reset") and snap.observed.held is None

    failed = _trainjob(
        "reset", 0, conditions=[_cond("Failed", "JobSetFailed", "jobset node-0 has failed")]
    )
    snap = await _executor(_runtime(FakeKube(trainjobs=[failed])), spec).observe()
    assert snap.observed.failure is not None
    assert (snap.observed.failure.stage, snap.observed.failure.message) == (
        "reset",
        "jobset node-0 has failed",
    )

    complete = _trainjob("reset", 0, conditions=[_cond("Complete", "JobSetCompleted", "done")])
    snap = await _executor(_runtime(FakeKube(trainjobs=[complete])), spec).observe()
    assert snap.observed.failure is not None
    assert "TrainJob succeeded but the stage wrote no manifest" in snap.observed.failure.message


async def test_missing_rbac_says_which_chart_value_grants_it(tmp_path: Path) -> None:
    forbidden = 'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:x"'
    kube = FakeKube(list_error=KubeError(403, forbidden))
    with pytest.raises(KubeError) as info:
        await _executor(_runtime(kube), _local_spec(tmp_path, nodes=2)).observe()
    blocked = classify(info.value)
    assert (blocked.reason, blocked.permanent) == ("Forbidden", False)
    assert "kubeflowTrainer.enabled=true" in blocked.message and "forbidden" in blocked.message


async def test_a_trainjob_the_webhook_refuses_fails_the_run(tmp_path: Path) -> None:
    denial = KubeError(
        403,
        'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
        "spec.runtimeRef: Invalid value: clustertrainingruntimes torch-distributed not found: "
        "specified clusterTrainingRuntime must be created before the TrainJob is created",
    )
    kube = FakeKube(create_error=denial)
    ex = _executor(_runtime(kube), _local_spec(tmp_path, nodes=2))
    with pytest.raises(TrainJobRejected, match="must be created before"):
        await ex.start_stage(RunStage(0, "reset", 0))
    # Through a reconcile: the run fails, saying so (no retry loop on a Forbidden condition).
    body = {
        "apiVersion": "selfmoa.dev/v1alpha1",
        "kind": "AlignmentRun",
        "metadata": {"name": "r", "namespace": NS, "generation": 1, "uid": "u-1"},
        "spec": ex.spec.wire(),
    }
    emitted: list[tuple[str, str, str]] = []
    await reconcile.reconcile(body, _runtime(kube), lambda *e: emitted.append(e))
    st = kube.patches[-1]["status"]
    assert st["phase"] == "Failed"
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "TrainJobRejected"
    assert "must be created before" in failed["message"]
    assert ("Warning", "TrainJobRejected") in [e[:2] for e in emitted]


# ------------------------------------------------------------------ through the operator (KMock)


def serve_trainer(cluster: Cluster) -> None:
    """Make the emulator serve trainer.kubeflow.org/v1alpha1 TrainJobs, as Trainer's CRD does."""
    cluster.resources[f"{builders.TRAINER_API_VERSION}/{builders.TRAINJOB_PLURAL}"] = (
        kmock.ResourceInfo(
            kind="TrainJob",
            singular="trainjob",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        )
    )


def trainjobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return objects(cluster, TRAINJOBS)


def finished(tj: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in (tj.get("status") or {}).get("conditions") or []
    )


async def finish_trainjob(cluster: Cluster, name: str, ctype: str, message: str) -> None:
    """What Trainer shows once the TrainJob's JobSet completed or failed."""
    reason = {"Complete": "JobSetCompleted", "Failed": "JobSetFailed"}[ctype]
    status = {"conditions": [{**_cond(ctype, reason, message), "lastTransitionTime": now()}]}
    assert TrainerV1alpha1TrainJobStatus.from_dict(status) is not None
    await patch_status(cluster, f"{TRAINJOBS_PATH}/{name}", status)


async def play_trainjob(cluster: Cluster, *, fail: str | None = None) -> str | None:
    """Run the first unfinished TrainJob's stage (the stand-in, as one process) and finish it."""
    for name, tj in sorted(trainjobs(cluster).items()):
        if finished(tj):
            continue
        trainer = tj["spec"]["trainer"]
        if fail is not None:
            await finish_trainjob(cluster, name, "Failed", fail)
            return name
        env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
        rc = await asyncio.to_thread(stand_in_stage, list(trainer["args"]), env)
        assert rc == 0
        await finish_trainjob(cluster, name, "Complete", "jobset completed")
        return name
    return None


async def drive(cluster: Cluster, name: str, *, fail: str | None = None) -> dict[str, Any]:
    """Play Jobs and TrainJobs until the run is Succeeded or Failed."""
    while True:

        def ready() -> Any:
            st = run_status(cluster, name)
            if st.get("phase") in ("Succeeded", "Failed"):
                return True
            pending = [*jobs(cluster).values(), *trainjobs(cluster).values()]
            return any(not finished(o) for o in pending)

        await wait_for(ready, timeout=30)
        st = run_status(cluster, name)
        if st.get("phase") in ("Succeeded", "Failed"):
            return st
        if await play_one(cluster, stand_in_stage) is None:
            await play_trainjob(cluster, fail=fail)


def multinode_run(name: str, tmp_path: Path) -> dict[str, Any]:
    return tiny_run(name, tmp_path, iterations=1, trainer={"gpus": 0, "nodes": 2})


async def _operator(cluster: Cluster) -> Operator:
    # TrainJobs aren't watched: a short resync notices their conditions.
    op = Operator(cluster, resync=0.3)
    await op.start()
    return op


async def test_multinode_run_trains_with_trainjobs(cluster: Cluster, tmp_path: Path) -> None:
    serve_trainer(cluster)
    op = await _operator(cluster)
    try:
        await apply(cluster, multinode_run("r", tmp_path))
        st = await drive(cluster, "r")
    finally:
        await op.stop()
    assert st["phase"] == "Succeeded", st
    assert sorted(trainjobs(cluster)) == ["r-i0-reset", "r-i1-train"]
    # Every other stage is a Job, and no training stage is.
    assert sorted(jobs(cluster)) == sorted(
        ["r-i0-evaluate"] + [f"r-i1-{s}" for s in stage_table.LOOP if s != "train"]
    )
    for tj in trainjobs(cluster).values():
        created = {k: v for k, v in tj.items() if k != "status"}
        # What the API server holds (our object plus its metadata) is a TrainJob to the models.
        typed = TrainerV1alpha1TrainJob.from_dict(created)
        assert typed is not None and typed.spec is not None and typed.spec.trainer is not None
        assert typed.spec.trainer.num_nodes == 2
        assert tj["metadata"]["ownerReferences"][0]["name"] == "r"


@pytest.mark.parametrize("pod_message", [None, "CUDA out of memory on node 1"])
async def test_a_failed_trainjob_fails_the_run_with_its_message(
    cluster: Cluster, tmp_path: Path, pod_message: str | None
) -> None:
    serve_trainer(cluster)
    if pod_message is not None:
        # The failed node's pod, as the JobSet leaves it: its termination message wins.
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "r-i0-reset-node-0-1-abcde",
                "namespace": NS,
                "labels": builders.stage_labels("r", 0, "reset"),
            },
            "spec": {"containers": [{"name": "node", "image": "worker"}]},
            "status": {
                "containerStatuses": [
                    {
                        "name": "node",
                        "state": {
                            "terminated": {
                                "exitCode": 1,
                                "message": pod_message,
                                "finishedAt": now(),
                            }
                        },
                    }
                ]
            },
        }
        async with cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod) as resp:
            assert resp.status < 400, await resp.text()
    op = await _operator(cluster)
    try:
        await apply(cluster, multinode_run("r", tmp_path))
        st = await drive(cluster, "r", fail="jobset failed: node-0 exited with code 1")
    finally:
        await op.stop()
    assert st["phase"] == "Failed"
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "StageFailed"
    expected = pod_message or "jobset failed: node-0 exited with code 1"
    assert failed["message"] == f"stage reset of iteration 0 failed: {expected}"


async def test_without_kubeflow_trainer_the_run_fails_saying_what_to_install(
    cluster: Cluster, tmp_path: Path
) -> None:
    op = await _operator(cluster)
    try:
        await apply(cluster, multinode_run("r", tmp_path))
        st = await wait_for(
            lambda: run_status(cluster, "r").get("phase") == "Failed" and run_status(cluster, "r")
        )
    finally:
        await op.stop()
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "TrainerNotInstalled"
    assert "Kubeflow Trainer v2" in failed["message"]
    assert "ClusterTrainingRuntime 'torch-distributed'" in failed["message"]
    # It failed before any work: no Job was created.
    assert not jobs(cluster)
