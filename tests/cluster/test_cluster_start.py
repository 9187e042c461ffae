"""What a run says before and while it starts, on the real control plane.

- A store URI without a bucket (`s3:///prefix`) is refused by the API server at apply (the CRD's
  schema); an example applied unchanged on the chart's defaults (a file:// store, a directory
  inside each Pod) fails at once naming the store; an unreachable store keeps the run retrying and says so; a missing credentials Secret
  is named while the run waits.
- A run deleted and created again under the same name takes over the earlier run's finished
  stages and says so (an Event and the `StagesReused` condition naming the earlier uid).
- A fixed field (the training objective) edited mid-run is refused with a condition and an Event, no
  next Job starts, and reverting it resumes the run; `status.observedGeneration` follows
  `metadata.generation` through the edits.
- `spec.queueName` / `spec.priorityClassName` reach the stage Jobs and their Pods as Kueue's
  labels (Job `suspend`, hence Kueue's admission itself, is 1.21: the emulator tier plays it).
- Events for stage started and finished land on the run, as `kubectl describe` shows them.

Each scenario deletes its run; none waits for a whole loop.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from realcluster import RUN_NS, Cluster, OperatorProcess, children, get_run, small_run, wait_until


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(get_run(cluster, name).get("status") or {})


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def _events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "-n",
        RUN_NS,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.kind=AlignmentRun,involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    return list(json.loads(out).get("items") or [])


def _reasons(cluster: Cluster, name: str) -> set[str]:
    return {str(e.get("reason")) for e in _events(cluster, name)}


def _apply(cluster: Cluster, run: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(run))


def _delete(cluster: Cluster, name: str) -> None:
    cluster.kubectl("-n", RUN_NS, "delete", "arun", name, "--wait=false")


def _patch_spec(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    body = json.dumps({"spec": spec})
    cluster.kubectl("-n", RUN_NS, "patch", "arun", name, "--type=merge", "-p", body)


@pytest.mark.timeout(300)
def test_a_store_uri_without_a_bucket_is_refused_at_apply(
    cluster: Cluster, operator: OperatorProcess, run_namespace: str, s3: dict[str, str]
) -> None:
    # The CRD's schema (generated from the same model as `selfmoa validate`) refuses it: the
    # user hears it from kubectl, before any object or Job exists.
    name = "no-bucket"
    run = small_run(name, s3)
    run["spec"]["storage"] = {"uri": "s3:///prefix"}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(run), check=False)
    assert proc.returncode != 0, proc.stdout
    assert 'spec.storage.uri: Invalid value: "s3:///prefix"' in proc.stderr, proc.stderr
    got = cluster.kubectl("-n", RUN_NS, "get", "arun", name, check=False)
    assert got.returncode != 0 and "NotFound" in got.stderr, got.stdout + got.stderr
    assert children(cluster, "jobs", name) == []


@pytest.mark.timeout(300)
def test_an_example_on_the_charts_defaults_fails_at_once_naming_its_store(
    cluster: Cluster, operator: OperatorProcess, run_namespace: str
) -> None:
    # The chart as installed here has no default store, so tiny-cpu.yaml (which names none)
    # gets file://./runs: a directory inside each stage Pod. Said before any Job runs, not as a
    # stage that "wrote no manifest".
    from realcluster import ROOT

    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    doc["metadata"]["namespace"] = RUN_NS
    name = doc["metadata"]["name"] = "tiny-cpu-defaults"
    _apply(cluster, doc)
    try:
        status = wait_until(
            "the run to fail",
            60,
            lambda: (s := _status(cluster, name)).get("phase") == "Failed" and s,
        )
        failed = _condition(status, "Failed")
        assert failed is not None and failed["reason"] == "InvalidSpec", status
        assert failed["message"].startswith("spec.storage.uri: file://./runs is a directory"), (
            failed
        )
        assert "config.storage" in failed["message"]
        assert children(cluster, "jobs", name) == []
    finally:
        _delete(cluster, name)


@pytest.mark.timeout(300)
def test_a_run_created_again_under_its_name_reuses_the_stages_visibly(
    cluster: Cluster, operator: OperatorProcess, run_namespace: str, s3: dict[str, str]
) -> None:
    name = "again"
    _apply(cluster, small_run(name, s3))
    try:
        wait_until(f"{name}'s first stage", 180, lambda: _status(cluster, name).get("iterations"))
        first_uid = get_run(cluster, name)["metadata"]["uid"]
    finally:
        cluster.kubectl("-n", RUN_NS, "delete", "arun", name, "--wait=true", timeout=120)
    _apply(cluster, small_run(name, s3))
    try:
        reused = wait_until(
            f"{name}'s StagesReused condition",
            120,
            lambda: _condition(_status(cluster, name), "StagesReused"),
        )
        assert reused["status"] == "True", reused
        assert f"AlignmentRun {RUN_NS}/{name} (uid {first_uid}" in reused["message"], reused
        assert get_run(cluster, name)["metadata"]["uid"] != first_uid
        wait_until(
            f"{name}'s StagesReused Event", 60, lambda: "StagesReused" in _reasons(cluster, name)
        )
        # The iteration it took over is in the new object's status at once (its metrics).
        assert [it["index"] for it in _status(cluster, name)["iterations"]][:1] == [0]
    finally:
        _delete(cluster, name)


@pytest.mark.timeout(300)
def test_an_unreachable_store_keeps_retrying_and_says_so(
    cluster: Cluster, operator: OperatorProcess, run_namespace: str, s3: dict[str, str]
) -> None:
    name = "store-down"
    run = small_run(name, s3)
    run["spec"]["storage"] = {"uri": "s3://bucket/p", "endpoint": "http://127.0.0.1:1"}
    _apply(cluster, run)
    try:
        status = wait_until(
            f"{name} to say it retries",
            180,
            lambda: "retrying" in ((st := _status(cluster, name)).get("message") or "") and st,
        )
        assert status["phase"] == "Running", status
        progressing = _condition(status, "Progressing")
        assert progressing is not None and progressing["reason"] == "StorageUnavailable", status
        assert children(cluster, "jobs", name) == []
    finally:
        _delete(cluster, name)


@pytest.mark.timeout(300)
def test_a_missing_credentials_secret_is_named_while_the_run_waits(
    cluster: Cluster, operator: OperatorProcess, run_namespace: str, s3: dict[str, str]
) -> None:
    name = "no-secret"
    run = small_run(name, s3)
    run["spec"]["storage"] = {**run["spec"]["storage"], "secretRef": "no-such-secret"}
    _apply(cluster, run)
    try:
        status = wait_until(
            f"{name} to name the Secret",
            180,
            lambda: (
                "no-such-secret" in ((st := _status(cluster, name)).get("message") or "") and st
            ),
        )
        assert status["phase"] == "Running" and "retrying" in status["message"], status
        assert children(cluster, "jobs", name) == []
    finally:
        _delete(cluster, name)


@pytest.mark.timeout(900)
def test_a_fixed_field_edited_mid_run_is_refused_until_reverted(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    name = "edit"
    _apply(cluster, small_run(name, s3, queueName="team-queue", priorityClassName="batch-low"))
    try:
        first = wait_until(f"{name}'s first Job", 120, lambda: children(cluster, "jobs", name))
        # Kueue's labels on the Job and on the Pod it makes.
        (job,) = first
        labels = job["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-queue", labels
        assert labels["kueue.x-k8s.io/priority-class"] == "batch-low", labels
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["kueue.x-k8s.io/queue-name"] == "team-queue", pod_labels
        wait_until(
            f"{name}'s StageStarted Event", 60, lambda: "StageStarted" in _reasons(cluster, name)
        )

        # The training objective defines what the adapters mean: fixed once the run started.
        _patch_spec(cluster, name, {"training": {"loss": "bfpo"}})
        status = wait_until(
            f"{name} to refuse the edit",
            120,
            lambda: (
                ((st := _status(cluster, name)).get("message") or "").startswith("spec.training")
                and st
            ),
        )
        assert "changed after the run started" in status["message"], status
        wait_until(
            f"{name}'s SpecChangeRefused Event",
            60,
            lambda: "SpecChangeRefused" in _reasons(cluster, name),
        )
        generation = get_run(cluster, name)["metadata"]["generation"]
        wait_until(
            f"{name}'s observedGeneration to follow the edit",
            60,
            lambda: _status(cluster, name).get("observedGeneration") == generation,
        )
        # The running stage may finish meanwhile; nothing new starts.
        wait_until(
            f"{name}'s first stage to finish",
            600,
            lambda: all(
                (j.get("status") or {}).get("succeeded") for j in children(cluster, "jobs", name)
            ),
            period=3,
        )
        assert len(children(cluster, "jobs", name)) == 1

        # Reverting the fixed field resumes the run: the next stage's Job appears.
        _patch_spec(cluster, name, {"training": {"loss": "dpo"}})
        wait_until(f"{name}'s next Job", 180, lambda: len(children(cluster, "jobs", name)) >= 2)
        wait_until(
            f"{name}'s StageSucceeded Event",
            60,
            lambda: "StageSucceeded" in _reasons(cluster, name),
        )
        run = get_run(cluster, name)
        assert (run.get("status") or {}).get("observedGeneration") == run["metadata"]["generation"]
    finally:
        _delete(cluster, name)
