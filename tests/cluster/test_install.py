"""Install the chart into a real kube-apiserver and run the operator with the chart's permissions.

The scenarios, in file order (they share one control plane, one install and one operator):
1. the chart installs the way users install it; the CRD is served; `kubectl get arun` works;
2. least privilege: what the chart's ServiceAccount may *not* do (cluster-wide and namespaced);
3. deleting a run mid-stage: the real garbage collector removes its Jobs and Pods, and the
   played Pod's process is killed;
4. a small AlignmentRun on S3 (moto) goes to Succeeded through real Jobs and played Pods, with
   printer columns showing real values (`slow_cluster`: each model-loading Pod builds the tiny
   base in its own empty cache, ~90 s each);
5. across all of it, no request of the operator got a 403 (apiserver audit log + operator log).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from realcluster import (
    CHART,
    OPERATOR_NS,
    RUN_NS,
    Cluster,
    Installed,
    OperatorProcess,
    children,
    final_status,
    install_chart,
    measure,
    operator_requests,
    small_run,
    used_permissions,
    wait_until,
)

# ------------------------------------------------------------------------------ 1. install


def test_the_chart_as_shipped_refuses_kubernetes_1_20(cluster: Cluster) -> None:
    """Version honesty: the chart says >=1.28, and Helm holds it to that on this 1.20 server."""
    import helm_python as helm

    with (
        helm.Config(kubeconfig_path=str(cluster.kubeconfig), namespace=OPERATOR_NS) as cfg,
        pytest.raises(helm.HelmError, match="kubeVersion"),
    ):
        cfg.install(str(CHART), "as-shipped", {}, namespace=OPERATOR_NS, dry_run="server")


def test_chart_installs_and_the_crd_is_served(cluster: Cluster, chart: Installed) -> None:
    kinds = sorted({o["kind"] for o in chart.objects})
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= set(kinds)
    crd = json.loads(
        cluster.kubectl("get", "crd", "alignmentruns.selfmoa.dev", "-o", "json").stdout
    )
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds.get("Established") == "True", conds
    assert conds.get("NamesAccepted") == "True", conds
    # The short name and the printer columns are served (empty list, but the table has them).
    res = cluster.kubectl("api-resources", "--api-group=selfmoa.dev", "-o", "wide").stdout
    assert "arun" in res
    out = cluster.kubectl("get", "arun", "-A")
    assert out.returncode == 0
    # The operator's ServiceAccount can list runs everywhere (its ClusterRole).
    kc = chart.sa_kubeconfig
    assert cluster.kubectl("get", "arun", "-A", kubeconfig=kc).returncode == 0


def test_operator_runs_with_the_chart_token(operator: OperatorProcess, chart: Installed) -> None:
    # Token only: the kubeconfig holds no client certificate (a cert would win over the token).
    kc = yaml.safe_load(chart.sa_kubeconfig.read_text())
    assert set(kc["users"][0]["user"]) == {"token"}
    time.sleep(5)
    assert operator.proc.poll() is None, operator.text()


# ------------------------------------------------------------------------------ 2. least privilege


def can_i(cluster: Cluster, kubeconfig: Path, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    return proc.stdout.strip() == "yes"


def test_chart_serviceaccount_cannot_do_what_it_does_not_need(
    cluster: Cluster, chart: Installed, run_namespace: str
) -> None:
    kc = chart.sa_kubeconfig
    # What it needs.
    assert can_i(cluster, kc, "create", "jobs.batch", "-n", run_namespace)
    assert can_i(cluster, kc, "patch", "alignmentruns.selfmoa.dev/status", "-n", run_namespace)
    # What it must not do.
    assert not can_i(cluster, kc, "create", "pods", "-n", run_namespace)
    assert not can_i(cluster, kc, "list", "secrets", "-n", run_namespace)
    assert not can_i(cluster, kc, "create", "secrets", "-n", run_namespace)
    assert not can_i(cluster, kc, "delete", "namespaces")
    assert not can_i(cluster, kc, "create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not can_i(cluster, kc, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    # A real request, not only the review: listing Secrets is a 403 from the server.
    proc = cluster.kubectl("-n", "kube-system", "get", "secrets", kubeconfig=kc, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr


#: Grants the operator never used on a real server (issue 13: its audited requests over this
#: tier and the benchmark), each still refused after the chart was cut to what it uses.
UNUSED_GRANTS = (
    ("get", "configmaps"),
    ("create", "configmaps"),
    ("get", "pods", "--subresource=log"),
    ("create", "pods", "--subresource=exec"),
    ("get", "pods"),
    ("watch", "pods"),
    ("delete", "pods"),
    ("create", "events.events.k8s.io"),
    ("patch", "events"),
    ("update", "alignmentruns.selfmoa.dev"),
    ("get", "alignmentruns.selfmoa.dev"),
    ("create", "alignmentruns.selfmoa.dev"),
    ("delete", "alignmentruns.selfmoa.dev"),
    ("update", "alignmentruns.selfmoa.dev", "--subresource=status"),
    ("patch", "jobs.batch"),
    ("update", "jobs.batch"),
    ("patch", "services"),
    ("watch", "services"),
    ("create", "persistentvolumeclaims"),
    ("create", "serviceaccounts"),
)


def test_chart_serviceaccount_has_no_unused_grant(
    cluster: Cluster, chart: Installed, run_namespace: str
) -> None:
    kc = chart.sa_kubeconfig
    for verb, what, *extra in UNUSED_GRANTS:
        assert not can_i(cluster, kc, verb, what, *extra, "-n", run_namespace), (verb, what, extra)
    # Cluster-scoped: nothing that widens its own rights or changes the API.
    for verb, what in (
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "namespaces"),
        ("get", "nodes"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ):
        assert not can_i(cluster, kc, verb, what), (verb, what)
    assert not can_i(cluster, kc, "create", "pods", "--subresource=exec", "-n", "kube-system")
    # A real request too: reading a Pod's log is a 403 from the server (no kubelet here, so the
    # authorizer answers before any node would be asked).
    pod = "no-such-pod"
    proc = cluster.kubectl("-n", run_namespace, "logs", pod, kubeconfig=kc, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    # Still granted: what the operator's code asks for (the rest of the rules; the no-403 test
    # below checks every request it actually made).
    for verb, what, *extra in (
        ("list", "alignmentruns.selfmoa.dev"),
        ("watch", "alignmentruns.selfmoa.dev"),
        ("patch", "alignmentruns.selfmoa.dev"),
        ("patch", "alignmentruns.selfmoa.dev", "--subresource=status"),
        ("get", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("patch", "deployments.apps"),
        ("create", "services"),
        ("list", "pods"),
        ("create", "events"),
    ):
        assert can_i(cluster, kc, verb, what, *extra, "-n", run_namespace), (verb, what, extra)


def test_chart_serviceaccount_reads_a_secret_only_by_name(
    cluster: Cluster, chart: Installed, run_namespace: str
) -> None:
    """Cluster-wide, the operator reads the Secret a run names in spec.storage.secretRef (its
    own store access), so it may `get` a Secret by name in any namespace — but never list or
    watch them, so it cannot discover credentials it was not pointed at. (Namespaced installs
    grant nothing outside their namespaces: the next test.)"""
    kc = chart.sa_kubeconfig
    assert can_i(cluster, kc, "get", "secrets", "-n", run_namespace)
    for verb in ("list", "watch", "create", "update", "patch", "delete"):
        assert not can_i(cluster, kc, verb, "secrets", "-n", run_namespace), verb
        assert not can_i(cluster, kc, verb, "secrets", "--all-namespaces"), verb


def test_namespaced_install_grants_nothing_outside_its_namespaces(
    cluster: Cluster, chart: Installed, run_namespace: str, tmp_path: Path
) -> None:
    """A second release with watchNamespaces: its Role exists only where it watches."""
    cluster.kubectl("create", "namespace", "team-b", check=False)
    scoped = install_chart(
        cluster,
        {"watchNamespaces": ["team-b"], "fullnameOverride": "selfmoa-scoped"},
        tmp_path,
        release="scoped",
        namespace="selfmoa-scoped",
    )
    assert "ClusterRole" not in {o["kind"] for o in scoped.objects}
    kc = scoped.sa_kubeconfig
    assert can_i(cluster, kc, "create", "jobs.batch", "-n", "team-b")
    assert can_i(cluster, kc, "watch", "alignmentruns.selfmoa.dev", "-n", "team-b")
    for verb, what in (
        ("create", "jobs.batch"),
        ("get", "secrets"),
        ("list", "alignmentruns.selfmoa.dev"),
    ):
        assert not can_i(cluster, kc, verb, what, "-n", run_namespace), (verb, what)
    assert not can_i(cluster, kc, "list", "alignmentruns.selfmoa.dev", "--all-namespaces")
    proc = cluster.kubectl("-n", run_namespace, "get", "jobs", kubeconfig=kc, check=False)
    assert "forbidden" in proc.stderr.lower(), proc.stderr


# ------------------------------------------------------------------------------ 3. delete mid-stage


def test_deleting_a_run_garbage_collects_its_children(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    t0 = time.monotonic()
    name = "gc-probe"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run(name, s3)))
    # The operator creates the first stage's Job; the job controller its Pod; the player runs it.
    pods = wait_until(
        "the first stage Pod to run",
        90,
        lambda: [
            p for p in children(cluster, "pods", name) if p["status"].get("phase") == "Running"
        ],
    )
    jobs = children(cluster, "jobs", name)
    assert jobs, "a Running Pod but no Job?"
    owner = jobs[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "AlignmentRun" and owner["name"] == name and owner.get("controller")
    uid = pods[0]["metadata"]["uid"]
    runner = kubelet.runners.get(uid)
    assert runner is not None and runner.procs and all(p.poll() is None for p in runner.procs)

    # Who deletes what: the operator's delete handler (behind its finalizer) deletes the Jobs,
    # Deployments and Services with propagationPolicy Background; the real garbage collector
    # then deletes their Pods (the operator never deletes a Pod: checked in the audit log).
    # Every child also has a controller ownerReference to the run, so the GC alone would
    # collect them if the handler did not.
    cluster.kubectl("-n", RUN_NS, "delete", "arun", name, "--wait=true", "--timeout=60s")
    t_del = time.monotonic()
    for kind in ("jobs", "pods", "deployments", "services", "configmaps"):
        wait_until(
            f"{kind} of {name} to be garbage collected",
            60,
            lambda kind=kind: not children(cluster, kind, name),
        )
    measure("delete arun -> children collected, s", round(time.monotonic() - t_del, 1))
    wait_until(
        "the played process to be killed",
        15,
        lambda: all(p.poll() is not None for p in runner.procs),
    )
    deleted = {
        e["objectRef"]["resource"]
        for e in operator_requests(cluster)
        if e["verb"] == "delete" and e.get("objectRef")
    }
    assert "jobs" in deleted and "pods" not in deleted, deleted
    # No finalizer left hanging on the run.
    proc = cluster.kubectl("-n", RUN_NS, "get", "arun", name, check=False)
    assert proc.returncode != 0 and "NotFound" in proc.stderr
    measure("scenario gc-probe, s", round(time.monotonic() - t0, 1))


# ------------------------------------------------------------------------------ 4. a whole run


@pytest.mark.slow_cluster
@pytest.mark.timeout(2400)
def test_small_run_on_s3_succeeds_through_an_operator_kill(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet: Any,
    run_namespace: str,
    s3: dict[str, str],
) -> None:
    """A one-iteration run to Succeeded; the operator is SIGKILLed while `respond` runs and
    restarted: the run resumes, no stage gets a second Job, nothing is lost."""
    t0 = time.monotonic()
    name = "tiny-s3"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(small_run(name, s3)))

    def respond_running() -> bool:
        return any(
            p["metadata"]["labels"].get("selfmoa.dev/stage") == "respond"
            and p["status"].get("phase") == "Running"
            for p in children(cluster, "pods", name)
        )

    def finished() -> dict[str, Any] | None:
        return final_status(cluster, name)

    wait_until(f"{name}'s respond stage to run", 1500, lambda: respond_running() or finished(), 2)
    if finished() is None:
        operator.kill_and_restart()
        measure(
            f"scenario {name}: operator SIGKILLed during respond at, s",
            round(time.monotonic() - t0),
        )
    # Polled rather than one `kubectl wait`, so that a Failed run fails the test at once.
    status = wait_until(f"{name} to finish", 2100, finished, period=5)
    seconds = round(time.monotonic() - t0, 1)
    measure(f"scenario {name} (1 iteration, S3) to {status.get('phase')}, s", seconds)
    assert status.get("phase") == "Succeeded", (
        f"{status.get('phase')} after {seconds}s: {json.dumps(status, indent=1)[:3000]}\n"
        f"operator log tail:\n{operator.text()[-3000:]}"
    )
    assert operator.kills == 1, "the run finished before the operator could be killed mid-stage"
    # What users type: `kubectl wait` on the condition.
    cluster.kubectl(
        "-n", RUN_NS, "wait", "--for=condition=Succeeded", f"arun/{name}", "--timeout=10s"
    )
    # Printer columns with real values (cut at the header's column starts: an empty column,
    # like STAGE once the run is over, is blank in kubectl's table).
    header, line = cluster.kubectl("-n", RUN_NS, "get", "arun", name).stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    row = {
        header[a:b].strip(): line[a:b].strip()
        for a, b in zip(starts, [*starts[1:], len(line) + 1], strict=True)
    }
    assert list(row)[:6] == ["NAME", "PHASE", "ITERATION", "STAGE", "SAFETY", "HELPFULNESS"], row
    assert row["NAME"] == name and row["PHASE"] == "Succeeded" and row["ITERATION"] == "1", row
    assert 0 <= float(row["SAFETY"]) <= 1 and 0 <= float(row["HELPFULNESS"]) <= 1, row
    measure(f"scenario {name}: kubectl get arun", line)
    # One Job per stage (names are deterministic: a restarted operator adopts, never duplicates),
    # each succeeded on its first Pod.
    jobs = children(cluster, "jobs", name)
    stages = sorted(
        (
            j["metadata"]["labels"]["selfmoa.dev/iteration"],
            j["metadata"]["labels"]["selfmoa.dev/stage"],
        )
        for j in jobs
    )
    assert len(stages) == 7 == len(set(stages)), stages
    assert all((j.get("status") or {}).get("succeeded") == 1 for j in jobs), [
        (j["metadata"]["name"], j.get("status")) for j in jobs
    ]
    measure(f"scenario {name}: Jobs", len(jobs))


# ------------------------------------------------------------------------------ 5. no 403

#: The time stamp that starts each line of the operator's log.
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
#: A 403 that is a number of its own (not the tail of 0.403 or 1403).
STATUS_403 = re.compile(r"(?<![\d.,])403(?!\d)")


def test_the_operator_never_got_a_403(cluster: Cluster, operator: OperatorProcess) -> None:
    events = operator_requests(cluster)
    assert events, "no request of the operator's ServiceAccount in the audit log"
    forbidden = [
        f"{e['verb']} {e['requestURI']}"
        for e in events
        if (e.get("responseStatus") or {}).get("code") == 403
    ]
    used = sorted(used_permissions(events))
    measure("operator requests (audited)", len(events))
    measure("operator (group, resource, verb) used", [" ".join(u) for u in used])
    assert not forbidden, forbidden
    # Messages only: a line's time stamp ("10:19:11,403 INFO ...") is no status code, nor is a
    # duration ("0.403 s").
    messages = [LOG_STAMP.sub("", line) for line in operator.text().splitlines()]
    denied = [m for m in messages if "Forbidden" in m or STATUS_403.search(m)]
    assert not denied, denied[:10]
