"""The GPU examples on the real node, applied as a user would after reading their headers.

What is swapped, and nothing else: every hub model becomes the tiny model (no hub here; the
served ones run in the vLLM stand-in), the store's endpoint becomes the node's S3 (the bucket,
prefix and Secret are the examples' own), and the Secrets their headers tell a user to create
exist. The node has 2 cores, a few GiB and 8 advertised GPUs, so each example either runs or
must stop at once with what the node lacks in the run's status, never a stage failure that
blames the stage. A copy of each qwen example is also sized to the node (`trainer.resources`
only), to show how far it gets and which step needs what only a real GPU cluster has.
model-cache-seed.yaml also runs on a volume the test provides (the node has no provisioner),
with its hub names as shipped and the stand-in's files seeded under their keys.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from realcluster import (
    MEASURED,
    ROOT,
    RUN_NS,
    Cluster,
    Installed,
    children,
    final_status,
    get_run,
    prepare_run_namespace,
    s3_client,
    wait_until,
)

EXAMPLES = ROOT / "manifests" / "examples"
STAND_IN_MODEL = "selfmoa/tiny"
#: The stand-in's weights as files (config, safetensors, tokenizer): what a seeded volume holds
#: under a hub model's key in the model-cache test.
STAND_IN_FILES = ROOT / "operator" / "selfmoa" / "tiny" / "base"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _run_name(docs: list[dict[str, Any]]) -> str:
    return str(next(d for d in docs if d["kind"] == "AlignmentRun")["metadata"]["name"])


def as_on_this_node(path: Path, s3: dict[str, str]) -> list[dict[str, Any]]:
    """The example's documents with its hub models swapped for the tiny model and its store
    reached at the node's S3 endpoint; everything else as shipped."""
    docs = _docs(path)
    for doc in docs:
        if doc["kind"] != "AlignmentRun":
            continue
        spec = doc["spec"]
        for section in (spec.get("policy"), spec.get("redTeam")):
            if section and section.get("model"):
                section["model"] = STAND_IN_MODEL
        for judge in [*spec.get("judges", []), *spec.get("evaluation", {}).get("judges", [])]:
            if judge.get("model"):
                judge["model"] = STAND_IN_MODEL
        spec["storage"]["endpoint"] = s3["endpoint"]
    return docs


def _apply(node: Cluster, docs: list[dict[str, Any]]) -> None:
    node.kubectl("-n", RUN_NS, "apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _said(run: dict[str, Any]) -> str:
    status = run.get("status") or {}
    return " | ".join(
        [str(status.get("message") or "")]
        + [str(c.get("message") or "") for c in status.get("conditions") or []]
    )


def _held(
    node: Cluster,
    name: str,
    needles: tuple[str, ...],
    timeout: float,
    *,
    may_end: bool = False,
    period: float = 3,
) -> str:
    """The run's words once they name every one of `needles`; unless `may_end`, it must not
    have ended. A wait that times out shows the run's last status."""
    last: list[str] = []

    def check() -> str | None:
        run = get_run(node, name)
        status = run.get("status") or {}
        last[:] = [json.dumps(status)[:1500]]
        phase = status.get("phase")
        if not may_end and phase in ("Succeeded", "Failed"):
            pytest.fail(f"{name} ended {phase}: {_said(run)[:2000]}")  # not a timeout
        said = _said(run)
        return said if all(n in said for n in needles) else None

    try:
        return str(wait_until(f"{name} to say {needles}", timeout, check, period=period))
    except AssertionError as e:  # wait_until's timeout
        raise AssertionError(f"{e}; its status: {last[0] if last else '-'}") from None


def _ended_watching(
    node: Cluster, name: str, seen: dict[str, dict[str, Any]]
) -> Callable[[], dict[str, Any] | None]:
    """The run's final status (None while it runs), for `wait_until`; each call also keeps the
    run's Deployments and Pods as last seen in `seen` (`kind/name`): the operator removes its
    servers when the run ends."""

    def ended() -> dict[str, Any] | None:
        for kind in ("deployments", "pods"):
            for obj in children(node, kind, name):
                seen[f"{kind}/{obj['metadata']['name']}"] = obj
        return final_status(node, name)

    return ended


def _hf_token(node: Cluster) -> None:
    # The examples' header: kubectl create secret generic hf-token --from-literal=HF_TOKEN=...
    node.kubectl("-n", RUN_NS, "delete", "secret", "hf-token", "--ignore-not-found")
    node.kubectl("-n", RUN_NS, "create", "secret", "generic", "hf-token",
                 "--from-literal=HF_TOKEN=hf_not_a_real_token")  # fmt: skip


def _delete(node: Cluster, docs: list[dict[str, Any]]) -> None:
    for doc in reversed(docs):
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        node.kubectl("-n", RUN_NS, "delete", kind, name, "--timeout=180s", "--ignore-not-found")
        if kind == "alignmentrun":
            # Its Pods hold CPU and the advertised GPUs: gone before the next scenario.
            wait_until(f"{name}'s Pods gone", 180, lambda n=name: not children(node, "pods", n))


def test_qwen_05b_as_shipped_waits_naming_what_the_node_lacks(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    # Its stages that load the policy ask for trainer.resources (8 CPUs, 32Gi, a GPU); pairs and
    # the stages that only talk to the servers keep the small class.
    _hf_token(node)
    docs = as_on_this_node(EXAMPLES / "qwen-0.5b.yaml", s3)
    name = _run_name(docs)
    t = time.monotonic()
    _apply(node, docs)
    try:
        said = _held(node, name, ("waits for a node", "Insufficient cpu"), 10 * 60)
        MEASURED["qwen-0.5b.yaml (as shipped) to its hold, s"] = round(time.monotonic() - t, 1)
        MEASURED[f"{name}: the run says"] = said[:600]
        jobs = children(node, "jobs", name)
        assert [j["metadata"]["labels"]["selfmoa.dev/stage"] for j in jobs] == ["evaluate"]
        # The one server (every model is the stand-in) is up on one of the node's GPUs.
        deployments = children(node, "deployments", name)
        assert len(deployments) == 1 and (deployments[0]["status"].get("readyReplicas") == 1)
    finally:
        _delete(node, docs)


#: Each qwen example's copy sized to the node (its name; `trainer.resources`): the evaluate Pod
#: fits beside the example's servers (qwen-7b-scale's 2 replicas x 2 GPUs hold 4 of the 8).
FITTED = {
    "qwen-0.5b.yaml": ("qwen-0-5b-fitted", {"cpu": "1", "memory": "3Gi"}),
    "qwen-7b-scale.yaml": ("qwen-7b-fitted", {"cpu": "500m", "memory": "3Gi"}),
}


@pytest.mark.parametrize("example", sorted(FITTED))
def test_a_qwen_example_sized_to_the_node_runs_until_its_guard_judge_needs_llama_guard(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str, example: str
) -> None:
    """The step a stand-in model can't pass: `format: llama-guard` reads Llama Guard's own
    reply ("safe" / "unsafe" + codes). The tiny model writes none, so the guard judge scores
    nothing and the stage refuses to go on under `minCoverage`, naming the judge and why."""
    _hf_token(node)
    docs = as_on_this_node(EXAMPLES / example, s3)
    run = docs[0]
    name, resources = FITTED[example]
    run["metadata"]["name"] = name
    run["spec"]["trainer"]["resources"] = resources
    run["spec"]["trainer"]["backoffLimit"] = 0  # one attempt: the failure is the same each time
    serving = run["spec"]["serving"]
    seen: dict[str, dict[str, Any]] = {}
    t = time.monotonic()
    _apply(node, docs)
    try:
        status = wait_until(f"{name} to end", 20 * 60, _ended_watching(node, name, seen), period=5)
        MEASURED[f"{example} (sized to the node) to its end, s"] = round(time.monotonic() - t, 1)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        MEASURED[f"{name}: the run says"] = f"{failed['reason']}: {failed['message'][:600]}"
        assert status["phase"] == "Failed", json.dumps(status)[:2000]
        assert "evaluate" in failed["message"] and "'guard'" in failed["message"]
        assert "unparsable" in failed["message"] and "min 90%" in failed["message"]
        # It got there on the node: the evaluate Pod (it loads the policy) on one of its GPUs.
        stage_pods = [
            p for p in children(node, "pods", name) if "job-name" in p["metadata"]["labels"]
        ]
        assert any(
            p["spec"].get("nodeName")
            and p["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == "1"
            for p in stage_pods
        ), [p["metadata"]["name"] for p in stage_pods]
        # Every server replica the example asks for was placed, each on its GPUs.
        servers = {
            key: p
            for key, p in seen.items()
            if key.startswith("pods/")
            and "job-name" not in p["metadata"]["labels"]
            and p["spec"].get("nodeName")
        }
        resources_of = {
            key: next(c for c in p["spec"]["containers"] if c["name"] == "vllm")["resources"]
            for key, p in servers.items()
        }
        assert len(servers) >= serving.get("replicas", 1), list(servers)
        limits = {r["limits"].get("nvidia.com/gpu") for r in resources_of.values()}
        assert limits == {str(serving["gpusPerModel"])}, resources_of
    finally:
        _delete(node, docs)


def _seed_stand_in(root: Path, repo: str) -> Path:
    """What the example's seed Job (`selfmoa fetch --hub REPO --revision main /cache`) leaves in
    the volume, through the same `materialize`, with the stand-in's files for the hub's (no hub
    here). Readable by the worker image's uid 1000, which the seed Job would have owned it as."""
    from selfmoa.store.model_cache import MODELS, hub_key, materialize

    (root / MODELS).mkdir(parents=True, exist_ok=True)

    def copy(dest: Path, _say: object) -> None:
        shutil.copytree(STAND_IN_FILES, dest, dirs_exist_ok=True)

    path = materialize(hub_key(repo, "main"), copy, cache_dir=root)
    for target in [root, *root.rglob("*")]:
        target.chmod(0o755 if target.is_dir() else 0o644)
    return path


def _bucket_keys(s3: dict[str, str]) -> list[str]:
    pages = s3_client(s3).get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"])
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_model_cache_example_reads_its_seeded_models_in_place(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str, tmp_path: Path
) -> None:
    """model-cache-seed.yaml on a node whose admin provides its ReadWriteMany volume (a
    hostPath PersistentVolume bound to the example's claim: this node has no provisioner).
    The hub names stay as shipped; the volume holds the stand-in's files under their keys, as
    the seed Job leaves them, since no hub is reachable (the Job itself is not applied). First
    only the policy is seeded: the run must wait naming the command that seeds the helper
    judge. Then the helper is seeded, as a rerun of the Job adds it: the servers and evaluate
    read both from the claim, nothing is downloaded or copied into the store, and the run
    stops at the step a stand-in can't pass: the rubric judge needs an instruct model's
    "Score: N"."""
    docs = [d for d in _docs(EXAMPLES / "model-cache-seed.yaml") if d["kind"] != "Job"]
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    run = next(d for d in docs if d["kind"] == "AlignmentRun")
    name = run["metadata"]["name"]
    spec = run["spec"]
    spec["storage"]["endpoint"] = s3["endpoint"]
    # Sized to the node (trainer.resources only), as the fitted qwen-0.5b: evaluate beside the
    # two servers on 2 cores.
    spec["trainer"]["resources"] = {"cpu": "500m", "memory": "3Gi"}
    spec["trainer"]["backoffLimit"] = 0
    policy, helper = spec["policy"]["model"], spec["judges"][1]["model"]
    volume = tmp_path / "models-volume"
    volume.mkdir(mode=0o755)
    pv_name = f"{RUN_NS}-{claim['metadata']['name']}-hostpath"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(volume), "type": "Directory"},
            "claimRef": {"namespace": RUN_NS, "name": claim["metadata"]["name"]},
        },
    }
    node.kubectl("apply", "-f", "-", input=yaml.safe_dump(pv))
    _seed_stand_in(volume, policy)
    t = time.monotonic()
    _apply(node, docs)
    try:
        said = _held(node, name, ("is not in", f"fetch --hub {helper} --revision main"), 10 * 60)
        MEASURED["model-cache-seed.yaml (helper not seeded) to its hold, s"] = round(
            time.monotonic() - t, 1
        )
        MEASURED[f"{name} (helper not seeded): the run says"] = said[:600]
        assert not children(node, "jobs", name)  # no stage starts before its servers

        _seed_stand_in(volume, helper)
        # The helper's server retries its check under the kubelet's back-off (up to 5 min):
        # a new Pod checks at once.
        waiting = [
            p["metadata"]["name"]
            for p in children(node, "pods", name)
            if not all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])
        ]
        if waiting:
            node.kubectl("-n", RUN_NS, "delete", "pod", *waiting, "--wait=false")
        # The servers and stage Pods as they ran.
        seen: dict[str, dict[str, Any]] = {}
        status = wait_until(f"{name} to end", 15 * 60, _ended_watching(node, name, seen), period=5)
        MEASURED["model-cache-seed.yaml (seeded) to its end, s"] = round(time.monotonic() - t, 1)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        MEASURED[f"{name} (seeded): the run says"] = (
            f"{failed['reason']}: {failed['message'][:600]}"
        )
        assert status["phase"] == "Failed", json.dumps(status)[:2000]
        assert "evaluate" in failed["message"] and "'helper'" in failed["message"], failed
        assert "unparsable" in failed["message"], failed

        # Read in place: each server names its model's directory in the claim, and every Pod
        # (servers and stages) mounts the claim read-only.
        from selfmoa.store.model_cache import hub_key

        args = [
            " ".join(d["spec"]["template"]["spec"]["containers"][0].get("args", []))
            for k, d in seen.items()
            if k.startswith("deployments/")
        ]
        for repo in (policy, helper):
            assert any(f"/model-cache/models/{hub_key(repo, 'main')}" in a for a in args), args
        pods = {k: p for k, p in seen.items() if k.startswith("pods/")}
        assert any("job-name" in p["metadata"].get("labels", {}) for p in pods.values()), list(pods)
        for key, pod in pods.items():
            mounts = [
                m
                for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
                for m in c.get("volumeMounts", [])
                if m["mountPath"] == "/model-cache"
            ]
            assert mounts and all(m.get("readOnly") for m in mounts), key
        # Nothing downloaded, nothing copied into the run's store: no model key there at all.
        stored = [k for k in _bucket_keys(s3) if f"/{name}/" in k]
        assert stored, "the run wrote nothing to its store"
        assert not [k for k in stored if "/models/" in k], [k for k in stored if "/models/" in k]
    finally:
        _delete(node, docs)
        node.kubectl("delete", "persistentvolume", pv_name, "--ignore-not-found")


#: GPU examples that must wait on this node, and what their runs must say while they do.
WAITING_EXAMPLES = {
    # 2 replicas x 2 GPUs of the (one, stand-in) server take 4 of the node's 8 GPUs; evaluate
    # asks for 32 CPUs and 256Gi. A server replica or the evaluate Pod, whichever the node can't
    # take first: both are the truth, in the scheduler's words. The queue labels do nothing
    # without Kueue.
    "qwen-7b-scale.yaml": "Insufficient",
    # The node has no storage provisioner: the example's ReadWriteMany claim stays Pending, and
    # the run says so (its servers mount the claim) instead of waiting in silence.
    "model-cache-seed.yaml": "PersistentVolumeClaim",
}


@pytest.mark.parametrize("example", sorted(WAITING_EXAMPLES))
def test_a_gpu_example_waits_naming_what_the_node_lacks(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str, example: str
) -> None:
    _hf_token(node)
    docs = as_on_this_node(EXAMPLES / example, s3)
    name = _run_name(docs)
    _apply(node, docs)
    try:
        said = _held(node, name, (WAITING_EXAMPLES[example],), 10 * 60)
        MEASURED[f"{name}: the run says"] = said[:600]
    finally:
        _delete(node, docs)


def test_qwen_05b_applied_unchanged_ends_or_waits_naming_the_real_cause(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    # Nothing swapped: its store is AWS S3 and its models are on the hub, and this node reaches
    # neither. What the user must read is that, not a stage failing for its own reasons.
    _hf_token(node)
    docs = _docs(EXAMPLES / "qwen-0.5b.yaml")
    name = _run_name(docs)
    t = time.monotonic()
    _apply(node, docs)
    try:

        def told() -> str | None:
            run = get_run(node, name)
            status = run.get("status") or {}
            said = _said(run)
            if status.get("phase") == "Failed":
                failed = next(c for c in status["conditions"] if c["type"] == "Failed")
                assert failed["reason"] in ("EnvironmentUnavailable", "InvalidSpec"), said
                return said
            reasons = {str(c.get("reason")) for c in status.get("conditions") or []}
            if reasons & {"StorageUnavailable", "StorageRefused"}:
                return said  # it waits for its store, saying so (an admin may fix the network)
            if "ServingNotReady" in reasons and "fetch" in said:
                return said  # its servers can't fetch their models, saying why
            return None

        said = wait_until(f"{name} to name its cause", 10 * 60, told, period=3)
        MEASURED["qwen-0.5b.yaml (unchanged) to its cause, s"] = round(time.monotonic() - t, 1)
        MEASURED[f"{name} (unchanged): the run says"] = said[:800]
        # No stage ran and failed on its way there: the cause is named before any stage blames.
        assert not any((j.get("status") or {}).get("failed") for j in children(node, "jobs", name))
    finally:
        _delete(node, docs)


def test_the_minio_example_succeeds_on_the_nodes_s3(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str
) -> None:
    # Its Secret as shipped (S3 keys for a MinIO; the node's S3 takes any), its endpoint the
    # node's S3 instead of the MinIO Service it expects in namespace minio.
    docs = as_on_this_node(EXAMPLES / "minio-s3.yaml", s3)
    name = _run_name(docs)
    t = time.monotonic()
    _apply(node, docs)
    try:
        status = wait_until(f"{name} to end", 30 * 60, lambda: final_status(node, name), period=5)
        MEASURED["minio-s3.yaml on the node's S3, s"] = round(time.monotonic() - t, 1)
        assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
        assert len(status.get("iterations") or []) == 3  # iteration 0 and the 2 it trains
    finally:
        # The example's Secret replaced the namespace's: put the node's S3 keys back.
        _delete(node, [d for d in docs if d["kind"] == "AlignmentRun"])
        node.kubectl("-n", RUN_NS, "delete", "secret", "s3-credentials", "--ignore-not-found")
        prepare_run_namespace(node, s3)


#: Examples for a laptop (`selfmoa run`), applied to the cluster unchanged: each must end or wait
#: at once naming its store, which no Pod of this cluster can share or reach.
LOCAL_EXAMPLES = {
    "tiny.yaml": "spec.storage.uri",
    "smollm2-cpu.yaml": "spec.storage.uri",
    # Its store is a laptop's S3 with the laptop's credentials (no secretRef): the run names the
    # store and the credentials it lacks ("storage: no usable S3 credentials for s3://...").
    "tiny-served-s3.yaml": "s3://selfmoa/runs/team-a/tiny-served-s3",
}


@pytest.mark.parametrize("example", sorted(LOCAL_EXAMPLES))
def test_a_laptop_example_applied_to_the_cluster_names_its_store(
    node: Cluster, chart: Installed, s3: dict[str, str], run_namespace: str, example: str
) -> None:
    docs = _docs(EXAMPLES / example)
    name = _run_name(docs)
    _apply(node, docs)
    try:
        said = _held(node, name, (LOCAL_EXAMPLES[example],), 120, may_end=True, period=2)
        MEASURED[f"{example} (unchanged): the run says"] = said[:400]
        assert not children(node, "jobs", name)  # no stage ran to find it out
    finally:
        _delete(node, docs)
