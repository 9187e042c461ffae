"""The operator and the examples on a real node: every Pod a container of the images `make images`
built, run by kubelet 1.20 through Docker, scheduled by kube-scheduler, networked by CNI and
kube-proxy, under exactly the securityContext the chart and the builders render.

The scenarios run in order and share one chart install (session fixtures in conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from realcluster import (
    MEASURED,
    ROOT,
    RUN_NS,
    SA_USER,
    Cluster,
    Installed,
    children,
    final_status,
    operator_requests,
    s3_client,
    small_run,
    wait_until,
)
from realnode import OPERATOR_IMAGE, SERVING_IMAGE, WORKER_IMAGE, operator_pod, pods

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _apply(node: Cluster, doc: dict[str, Any] | str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    node.kubectl("-n", RUN_NS, "apply", "-f", "-", input=text)


def _finished(node: Cluster, name: str, timeout: float) -> dict[str, Any]:
    """The run's final status; a phase line whenever it moves on, so a long run shows progress."""
    seen: list[str] = []

    def check() -> dict[str, Any] | None:
        st = final_status(node, name)
        if st is None:
            now = json.loads(node.kubectl("-n", RUN_NS, "get", "arun", name, "-o", "json").stdout)
            line = str((now.get("status") or {}).get("message") or "")
            if line and (not seen or seen[-1] != line):
                seen.append(line)
                print(f"[{name}] {line}", flush=True)
        return st

    return dict(wait_until(f"{name} to finish", timeout, check, period=3))


def _docker_containers(pod_namespace: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
         f"label=io.kubernetes.pod.namespace={pod_namespace}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def test_the_operator_runs_in_its_image_with_its_mounted_token(
    node: Cluster, chart: Installed
) -> None:
    pod = operator_pod(node)
    container = pod["spec"]["containers"][0]
    status = pod["status"]["containerStatuses"][0]
    assert container["image"] == OPERATOR_IMAGE
    assert status["containerID"].startswith("docker://"), status
    # Exactly the securityContext the chart rendered (non-root uid, read-only root, no caps).
    rendered = next(o for o in chart.objects if o["kind"] == "Deployment")["spec"]["template"]
    assert pod["spec"]["securityContext"] == rendered["spec"]["securityContext"]
    assert container["securityContext"] == rendered["spec"]["containers"][0]["securityContext"]
    assert SA_MOUNT in {m["mountPath"] for m in container["volumeMounts"]}
    # The operator's own requests reached the API server as its ServiceAccount: the mounted
    # token, through the `kubernetes` Service (kube-proxy) from the Pod's network.
    requests = wait_until(
        "the operator's first requests", 60, lambda: operator_requests(node, SA_USER)
    )
    assert {r["responseStatus"]["code"] for r in requests} <= {200, 201}, requests[:3]
    assert all(ip.startswith("10.244.") for r in requests for ip in r.get("sourceIPs", [])[:1]), {
        ip for r in requests for ip in r.get("sourceIPs", [])
    }


PROBE = """
import socket
print("service", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
for name in ("example.com", "deb.debian.org"):
    try:
        print("resolved", name, socket.gethostbyname(name))
    except OSError as e:
        print("unresolved", name, type(e).__name__)
for address in ("1.1.1.1", "8.8.8.8"):
    try:
        socket.create_connection((address, 53), timeout=3).close()
        print("reached", address)
    except OSError as e:
        print("unreachable", address, type(e).__name__)
"""


def test_a_pod_resolves_services_and_reaches_nothing_outside_the_node(
    node: Cluster, chart: Installed, run_namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "net-probe", "namespace": run_namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "probe", "image": OPERATOR_IMAGE, "imagePullPolicy": "Never",
                 "command": ["python3", "-c", PROBE]}
            ],
        },
    }  # fmt: skip
    _apply(node, pod)
    wait_until(
        "the probe Pod to finish", 120,
        lambda: pods_named(node, run_namespace, "net-probe") in ("Succeeded", "Failed"),
    )  # fmt: skip
    out = node.kubectl("-n", run_namespace, "logs", "net-probe").stdout
    node.kubectl("-n", run_namespace, "delete", "pod", "net-probe", "--wait=false")
    assert "service 10.0.0.1" in out, out
    assert "resolved" not in out.replace("unresolved", ""), out
    assert "reached" not in out.replace("unreachable", ""), out


def pods_named(node: Cluster, namespace: str, name: str) -> str:
    out = node.kubectl("-n", namespace, "get", "pod", name, "-o", "json", check=False).stdout
    return str(json.loads(out or "{}").get("status", {}).get("phase", ""))


def test_tiny_cpu_succeeds_with_every_stage_in_the_worker_image(
    node: Cluster, chart: Installed, run_namespace: str
) -> None:
    # The example as shipped; its store is the chart's default (config.storage).
    t = time.monotonic()
    _apply(node, (ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    st = _finished(node, "tiny-cpu", 45 * 60)
    MEASURED["tiny-cpu.yaml on the node, s"] = round(time.monotonic() - t, 1)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:3000]
    jobs = children(node, "jobs", "tiny-cpu")
    assert len(jobs) >= 10
    images = {c["image"] for j in jobs for c in j["spec"]["template"]["spec"]["containers"]}
    assert images == {WORKER_IMAGE}
    ran = pods(node, run_namespace, "selfmoa.dev/run=tiny-cpu")
    ok = [
        p for p in ran
        if p["status"]["phase"] == "Succeeded"
        and all(cs["containerID"].startswith("docker://") for cs in p["status"]["containerStatuses"])
    ]  # fmt: skip
    assert len(ok) >= len(jobs), [p["metadata"]["name"] for p in ran]
    # Every stage Pod ran as the worker image's user, as the builders say.
    assert {p["spec"]["securityContext"]["runAsUser"] for p in ran} == {10001}
    MEASURED["tiny-cpu.yaml stage Jobs"] = len(jobs)


def test_deleting_the_run_removes_everything(node: Cluster, run_namespace: str) -> None:
    t = time.monotonic()
    node.kubectl("-n", run_namespace, "delete", "arun", "tiny-cpu", "--timeout=180s")
    for kind in ("jobs", "pods", "services", "configmaps", "deployments"):
        wait_until(f"no {kind} of tiny-cpu", 180, lambda k=kind: not children(node, k, "tiny-cpu"))
    # And on the node: no container of its Pods is left.
    wait_until(
        "the run's containers removed from the node",
        180,
        lambda: not [n for n in _docker_containers(run_namespace) if "tiny-cpu" in n],
    )
    MEASURED["kubectl delete to nothing left, s"] = round(time.monotonic() - t, 1)


def test_a_served_run_succeeds_with_its_server_and_adapter_agent_in_containers(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    """serving.engine: vllm on S3: a Deployment per model (model fetch init container, the
    server, the adapter agent sidecar), a Service the stage Pods reach by its DNS name, every
    adapter loaded by the agent. The server is `selfmoa serve` in the vLLM stand-in image; it
    asks for a GPU, which the node advertises and the Pod doesn't use."""
    name = "tiny-served"
    t = time.monotonic()
    _apply(node, small_run(name, s3, serving={"engine": "vllm"}))
    st = _finished(node, name, 30 * 60)
    MEASURED[f"{name} (vLLM path, stand-in) on the node, s"] = round(time.monotonic() - t, 1)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:3000]
    served = [p for p in pods(node, run_namespace, f"selfmoa.dev/run={name}")
              if "job-name" not in p["metadata"]["labels"]]  # fmt: skip
    assert served, "no serving Pod"
    containers = {c["name"]: c for p in served for c in p["spec"]["containers"]}
    assert containers["vllm"]["image"] == SERVING_IMAGE
    assert containers["adapter-agent"]["image"] == WORKER_IMAGE
    assert containers["vllm"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Stages asked for the iteration's adapter through the desired set the agent serves (and
    # evaluate waited until the agent reported it loaded: the run could not succeed otherwise).
    client = s3_client(s3)
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=s3["bucket"], Prefix=f"runs/{RUN_NS}/{name}/serving/")
        .get("Contents", [])
    ]  # fmt: skip
    desired = next(k for k in keys if k.endswith("/adapters.json"))
    wanted = json.loads(client.get_object(Bucket=s3["bucket"], Key=desired)["Body"].read())
    assert any("iter-001" in json.dumps(a) for a in wanted.get("adapters", wanted)), wanted
    node.kubectl("-n", run_namespace, "delete", "arun", name, "--timeout=180s")


def _failed_run(node: Cluster, s3: dict[str, str], name: str, **spec: Any) -> dict[str, Any]:
    _apply(node, small_run(name, s3, **spec))
    st = _finished(node, name, 10 * 60)
    assert st["phase"] == "Failed", json.dumps(st, indent=1)[:3000]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    print(f"[{name}] {failed['reason']}: {failed['message']}")
    # A stuck Pod keeps its CPU request: gone, so the next scenario's Pods fit the 2-core node.
    node.kubectl("-n", RUN_NS, "delete", "arun", name, "--timeout=180s")
    wait_until(f"{name}'s Pods gone", 180, lambda: not children(node, "pods", name))
    return dict(failed)


def _trainer(**over: Any) -> dict[str, Any]:
    return {"gpus": 0, "backoffLimit": 0, "activeDeadlineSeconds": 1800, **over}


def test_a_stage_whose_image_is_not_there_ends_the_run_naming_it(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    failed = _failed_run(node, s3, "no-image", trainer=_trainer(image="selfmoa/worker:absent"))
    assert failed["reason"] == "StageCannotStart"
    assert "ErrImageNeverPull" in failed["message"] and "selfmoa/worker:absent" in failed["message"]


def test_a_stage_whose_command_is_not_there_ends_the_run_naming_it(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    # An image without the worker's entry point (the Debian base the images are made from).
    failed = _failed_run(
        node, s3, "no-command", trainer=_trainer(image="selfmoa/debian-python:bookworm")
    )
    assert failed["reason"] in ("StageFailed", "StageCannotStart")
    assert "selfmoa" in failed["message"] and "not found" in failed["message"]


def test_a_stage_over_its_memory_limit_ends_the_run_saying_oomkilled(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    failed = _failed_run(
        node, s3, "oom", trainer=_trainer(resources={"cpu": "1", "memory": "40Mi"})
    )
    assert failed["reason"] == "StageFailed"
    assert "OOMKilled" in failed["message"] and "40Mi" in failed["message"]
