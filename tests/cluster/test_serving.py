"""Serving Pods and Services through the player: the objects the operator builds, for real.

The Deployment and Service are exactly `builders.serving_objects` for a vLLM run on S3 (applied
as the admin, without the operator): the deployment controller makes the Pod, the player runs
its init and main containers (vLLM as `selfmoa serve`, sidecars as themselves) and their
readiness probes, the Deployment becomes available, and a played Job Pod reaches the Service by
its cluster DNS name through the player's proxy — as a stage Job's `SELFMOA_ENDPOINTS` URL would.
`slow_cluster`: the model is built or fetched in the Pod's own empty volumes first (minutes).
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
    final_status,
    get_run,
    measure,
    small_run,
    wait_until,
)


@pytest.mark.slow_cluster
@pytest.mark.timeout(900)
def test_a_served_model_is_reachable_by_its_service_name(
    cluster: Cluster, kubelet: Any, run_namespace: str
) -> None:
    from selfmoa.api.spec import AlignmentRunSpec, PolicySpec, ServingEngine, ServingSpec
    from selfmoa.controller.builders import endpoints, serving_objects
    from selfmoa.controller.config import OperatorConfig

    t0 = time.monotonic()
    # The spec's default (file://) store: the server alone, no init container or sidecar
    # (an S3 run's server gets those: test_a_vllm_run_on_s3_succeeds plays them).
    spec = AlignmentRunSpec(
        policy=PolicySpec(model="selfmoa/tiny"), serving=ServingSpec(engine=ServingEngine.vllm)
    )
    dep, svc = serving_objects(
        run="served",
        namespace=RUN_NS,
        spec=spec,
        model="selfmoa/tiny",
        replicas=1,
        config=OperatorConfig(),
    )
    # The player plays the operator's children only (its label selector): these carry its labels.
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "selfmoa-operator"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([svc, dep]))
    name = dep["metadata"]["name"]

    def available() -> bool:
        out = cluster.kubectl("-n", RUN_NS, "get", "deploy", name, "-o", "json").stdout
        return bool((json.loads(out).get("status") or {}).get("readyReplicas"))

    wait_until(
        "the serving Deployment to be ready (readiness probes via the player)", 600, available
    )
    measure("serving pod to ready, s", round(time.monotonic() - t0, 1))
    pods = json.loads(
        cluster.kubectl(
            "-n", RUN_NS, "get", "pods", "-l", f"selfmoa.dev/serving={name}", "-o", "json"
        ).stdout
    )["items"]
    statuses = pods[0]["status"]["containerStatuses"]
    names = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
    assert sorted(s["name"] for s in statuses) == sorted(names)
    assert all(s["ready"] for s in statuses), statuses
    inits = dep["spec"]["template"]["spec"].get("initContainers") or []
    measure("serving pod containers (init; main)", ([c["name"] for c in inits], names))

    url = endpoints("served", RUN_NS, spec)["selfmoa/tiny"]
    assert url.startswith(f"http://{name}.{RUN_NS}.svc:8000/")
    # A played Job Pod that asks the Service for its models, as a stage process would.
    code = (
        "import httpx, sys; r = httpx.get(sys.argv[1] + '/models', timeout=30); "
        "r.raise_for_status(); print(r.text)"
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "ask-served",
            "namespace": RUN_NS,
            "labels": dep["metadata"]["labels"],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "selfmoa-operator"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "ask", "image": "python", "command": ["python", "-c", code, url]}
                    ],
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

    def finished() -> dict[str, Any] | None:
        out = cluster.kubectl("-n", RUN_NS, "get", "job", "ask-served", "-o", "json").stdout
        status: dict[str, Any] = json.loads(out).get("status") or {}
        return status if status.get("succeeded") or status.get("failed") else None

    status = wait_until("the client Job", 120, finished)
    pods = kubelet.pod_dirs(RUN_NS)
    logs = {p.name: (p / "ask.log").read_text() for p in pods if (p / "ask.log").exists()}
    assert status.get("succeeded") == 1, logs
    assert any("selfmoa/tiny" in text for text in logs.values()), logs
    cluster.kubectl("-n", RUN_NS, "delete", "job/ask-served", f"deploy/{name}", f"svc/{name}")


@pytest.mark.slow_cluster
@pytest.mark.timeout(1500)
def test_a_vllm_run_on_s3_succeeds(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    """The operator's own serving path: Deployment + Service per model, stages held until the
    servers are ready, SELFMOA_ENDPOINTS to the stages, adapters loaded by the sidecar."""
    t0 = time.monotonic()
    name = "tiny-vllm"
    cluster.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(small_run(name, s3, serving={"engine": "vllm"}))
    )

    def finished() -> dict[str, Any] | None:
        status = final_status(cluster, name)
        if status is not None:
            return status
        # Fail fast when a serving Pod can't start (a kubelet would show Init:CrashLoopBackOff).
        for pod in [
            p for p in children(cluster, "pods", name) if "job-name" not in p["metadata"]["labels"]
        ]:
            for init in pod["status"].get("initContainerStatuses") or []:
                if init.get("restartCount", 0) >= 3:
                    logs = "".join(
                        (d / f"{init['name']}.log").read_text()[-1500:]
                        for d in kubelet.pod_dirs(RUN_NS)
                        if d.name.startswith(pod["metadata"]["name"])
                    )
                    run_status = get_run(cluster, name).get("status") or {}
                    raise AssertionError(
                        f"{pod['metadata']['name']}: init container {init['name']} failed "
                        f"{init['restartCount']} times; run: {run_status.get('message')}\n{logs}"
                    )
        return None

    try:
        status = wait_until(f"{name} to finish", 1200, finished)
    except AssertionError as e:
        pods = cluster.kubectl("-n", RUN_NS, "get", "pods", "-o", "wide").stdout
        raise AssertionError(f"{e}\n{pods}") from None
    finally:
        cluster.kubectl("-n", RUN_NS, "delete", "arun", name, "--wait=false")
    measure(f"scenario {name} to {status['phase']}, s", round(time.monotonic() - t0, 1))
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
