"""What the spec asks of GPUs, replicas, queues and gated models reaches the right pods."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from selfmoa.api import SpecError, parse_run
from selfmoa.cli import build_parser
from selfmoa.controller import builders
from selfmoa.controller.children import deployment_ready
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.serving_plan import serving_replicas
from selfmoa.run import stage_table
from selfmoa.run.planner import Observed, RunStage


def _spec(**over: Any) -> Any:
    spec = {
        "policy": {"model": "org/p"},
        "serving": {"engine": "vllm", "gpusPerModel": 2, "replicas": 3, "hfTokenSecretRef": "hf"},
        "queueName": "gpu-queue",
        "priorityClassName": "high",
        **over,
    }
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


def _job(stage: str, spec: Any) -> dict[str, Any]:
    return builders.stage_job(
        run="r",
        namespace="ml",
        spec=spec,
        iteration=1,
        stage=stage,
        parent=0,
        config=OperatorConfig(),
    )


def test_tensor_parallel_follows_gpus_per_model_and_shm_grows() -> None:
    dep, _ = builders.serving_objects(
        run="r", namespace="ml", spec=_spec(), model="org/p", replicas=3, config=OperatorConfig()
    )
    kubernetes_validate.validate(dep, "1.30.0", strict=True)
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == "4Gi"
    one, _ = builders.serving_objects(
        run="r",
        namespace="ml",
        spec=_spec(serving={"engine": "vllm"}),
        model="org/p",
        replicas=1,
        config=OperatorConfig(),
    )
    assert "--tensor-parallel-size" not in one["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("gpus", [3, 5, 6, 12])
def test_gpus_per_model_must_be_a_tensor_parallel_size(gpus: int) -> None:
    with pytest.raises(SpecError, match=r"serving\.gpusPerModel"):
        _spec(serving={"engine": "vllm", "gpusPerModel": gpus})


def test_replicas_per_model_and_readiness_of_all_of_them() -> None:
    spec = _spec()
    action = RunStage(1, "respond", 0)
    assert set(serving_replicas(spec, action, Observed()).values()) == {3}
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 3}}
    dep["status"] = {"observedGeneration": 2, "readyReplicas": 2}
    assert not deployment_ready(dep)
    dep["status"]["readyReplicas"] = 3
    assert deployment_ready(dep)


def test_kueue_labels_on_jobs_and_serving_pods() -> None:
    spec = _spec()
    job = _job("respond", spec)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[builders.QUEUE_LABEL] == "gpu-queue"
        assert labels[builders.PRIORITY_LABEL] == "high"
    dep, _ = builders.serving_objects(
        run="r", namespace="ml", spec=spec, model="org/p", replicas=1, config=OperatorConfig()
    )
    assert dep["spec"]["template"]["metadata"]["labels"][builders.QUEUE_LABEL] == "gpu-queue"
    # The selector stays what it was: relabelling a queue must not orphan running pods.
    assert builders.QUEUE_LABEL not in dep["spec"]["selector"]["matchLabels"]
    assert builders.QUEUE_LABEL not in _job("respond", _spec(queueName=None))["metadata"]["labels"]


def test_hub_token_reaches_every_job_that_loads_a_model_by_reference() -> None:
    spec = _spec()
    for d in stage_table.STAGES:
        env = {
            e["name"]: e
            for e in _job(d.name, spec)["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        if d.loads_models:
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
            assert "value" not in env["HF_TOKEN"]
        else:
            assert "HF_TOKEN" not in env
    assert {d.name for d in stage_table.STAGES if d.loads_models} >= {"reset", "train", "respond"}


def test_multi_gpu_training_jobs_launch_one_process_per_gpu() -> None:
    spec = _spec(trainer={"gpus": 4})
    train = _job("train", spec)["spec"]["template"]["spec"]
    c = train["containers"][0]
    assert c["command"][:5] == ["torchrun", "--nnodes", "1", "--nproc-per-node", "4"]
    assert c["command"][-2:] == ["-m", "selfmoa.cli"]
    assert build_parser().parse_args(c["args"]).name == "train"
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert any(v["name"] == "shm" for v in train["volumes"])
    kubernetes_validate.validate(_job("train", spec), "1.30.0", strict=True)
    # Stages that don't train, and one-GPU training, keep the plain entry point.
    assert _job("respond", spec)["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "selfmoa"
    ]
    one = _job("train", _spec(trainer={"gpus": 1}))["spec"]["template"]["spec"]
    assert one["containers"][0]["command"] == ["selfmoa"]
    assert all(v["name"] != "shm" for v in one["volumes"])
