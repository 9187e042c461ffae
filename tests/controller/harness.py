"""Test harness: a KMock cluster that behaves enough like Kubernetes, the real Kopf operator in
this event loop (startable and stoppable, to simulate restarts), and a "cluster player" that runs
each stage Job's command and marks the Job finished, as kubelet + the Job controller would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import kopf

from selfmoa.api import GROUP, PLURAL, VERSION
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.handlers import register
from selfmoa.controller.kube import Kube
from selfmoa.controller.runtime import Runtime
from selfmoa.run import layout
from selfmoa.store import Store, open_store

NS = "ml"
RUNS = kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}")
JOBS = kmock.resource("batch/v1/jobs")
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
SERVICES = kmock.resource("v1/services")
PODS = kmock.resource("v1/pods")
EVENTS = kmock.resource("v1/events")
RUNS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster(kmock.KubernetesEmulator):
    """KMock plus what Kopf relies on: uid, resourceVersion, creationTimestamp, generation."""

    _rv = itertools.count(1)
    #: (method, resource plural, name) of every request, for counting.
    calls: list[tuple[str, str, str | None]] = []

    #: KMock keeps every request and matches each new one against the whole history, which
    #: makes a request cost O(requests so far): 78% of the CPU of a 5-run benchmark went there.
    #: Nothing here looks back further than this, so older requests are dropped.
    HISTORY = 16

    async def _handle(self, request: Any) -> Any:
        if len(self._requests) > 2 * self.HISTORY:
            del self._requests[: -self.HISTORY]
        plural = getattr(request.resource, "plural", None) or ""
        Cluster.calls.append((str(request.method.value), str(plural), request.name))
        data = request.data
        if isinstance(data, list):
            # Kopf guards its finalizer JSON patch with a resourceVersion test; KMock does not
            # order its watch events and patch responses like an API server, so the test can
            # compare against a version Kopf has not been shown yet. Drop only that test op.
            data[:] = [
                op
                for op in data
                if not (op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion")
            ]
        if request.resource is not None and isinstance(data, dict):
            meta = (
                data.setdefault("metadata", {}) if request.action == kmock.action.CREATE else None
            )
            if meta is not None:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:8]}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now())
                meta["generation"] = 1
                meta["resourceVersion"] = str(next(self._rv))
            elif request.action == kmock.action.UPDATE and request.name:
                m = data.setdefault("metadata", {})
                m["resourceVersion"] = str(next(self._rv))
                if "spec" in data and request.subresource is None:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects and not self.objects[key].deleted:
                        old = self.objects[key].raw.get("metadata", {}).get("generation", 1)
                        m["generation"] = int(old) + 1
        return await super()._handle(request)


def declare(cluster: Cluster) -> None:
    cluster.resources.load_bundled()
    cluster.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="AlignmentRun",
        singular="alignmentrun",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    )


@contextlib.asynccontextmanager
async def cluster_server() -> Any:
    Cluster.calls = []
    async with Cluster() as cluster, kmock.Server(cluster):
        declare(cluster)
        yield cluster


class Operator:
    """The real operator (our handlers, real Kopf) against the emulator; restartable.

    It runs in its own thread and event loop, like a separate process: on stop, Kopf cancels
    every task of its loop, which must not include the emulator's request handlers.
    """

    def __init__(
        self, cluster: Cluster, config: OperatorConfig | None = None, resync: float = 30.0
    ) -> None:
        self.cluster = cluster
        # The harness plays every Pod on this filesystem: a file:// store is shared here.
        self.config = config or OperatorConfig(
            job_ttl_seconds_after_finished=None, shared_file_storage=True
        )
        self.resync = resync
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.rt: Runtime | None = None
        self.starts = 0
        self.error: BaseException | None = None

    def _main(self, ready: threading.Event) -> None:
        url = str(self.cluster.url).rstrip("/")
        rt: Runtime = Runtime(
            config=self.config, kube=Kube(lambda: rt.connection), resync_seconds=self.resync
        )
        registry = kopf.OperatorRegistry()

        def tune(settings: kopf.OperatorSettings) -> None:
            settings.persistence.consistency_timeout = 3.0
            settings.watching.reconnect_backoff = 0.05
            settings.posting.level = logging.INFO

        register(
            registry,
            rt,
            login=lambda **_: kopf.ConnectionInfo(server=url, default_namespace=NS),
            scanning=False,
            tune=tune,
        )
        self.rt = rt
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    standalone=True,
                    namespaces=[NS],
                    stop_flag=self.stop_flag,
                    ready_flag=ready,
                )
            )
        except BaseException as e:
            self.error = e

    async def start(self) -> None:
        ready = threading.Event()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 10), "operator did not start"
        self.starts += 1

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "operator did not stop"
        self.thread = None


# ------------------------------------------------------------------------- cluster play


def jobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {
        name: obj.raw
        for (res, ns, name), obj in list(cluster.objects.items())
        if res == JOBS and not obj.deleted
    }


def objects(cluster: Cluster, resource: Any) -> dict[str, dict[str, Any]]:
    return {
        name: obj.raw
        for (res, ns, name), obj in list(cluster.objects.items())
        if res == resource and not obj.deleted
    }


def run_status(cluster: Cluster, name: str) -> dict[str, Any]:
    key = (RUNS, NS, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return {}
    return dict(cluster.objects[key].raw.get("status") or {})


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in st.get("conditions") or []:
        if c["type"] == ctype and c["status"] == "True":
            return dict(c)
    return None


def job_finished(job: dict[str, Any]) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conds)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def job_env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(job).get("env", []) if "value" in e}


def stand_in_stage(args: list[str], env: dict[str, str], store: Store | None = None) -> int:
    """Instant stand-in for `selfmoa stage`: the manifest (and metrics for evaluate) only, into
    `store` (default: the `--run-uri` opened as is, a file:// store)."""
    name, uri = args[1], args[args.index("--run-uri") + 1]
    k = int(args[args.index("--iteration") + 1])
    parent = int(args[args.index("--parent") + 1])
    store = store if store is not None else open_store(uri)
    if name == "evaluate":
        # Attack success rate falls each iteration: every iteration is accepted.
        store.write_json(
            layout.stage_file(k, "evaluate", layout.METRICS),
            {
                "iteration": k,
                "parent": parent if k else None,
                "safety": 0.5 + 0.1 * k,
                "helpfulness": 0.7,
                "attack_success_rate": max(0.0, 0.5 - 0.1 * k),
                "over_refusal": 0.1,
                "pairs": 10 * k,
            },
        )
    store.write_json(layout.manifest_key(k, name), {"stage": name, "iteration": k, "files": {}})
    return 0


_env_lock = threading.Lock()


def real_stage(args: list[str], env: dict[str, str]) -> int:
    """The real `selfmoa stage ...` in-process, with the Job's environment."""
    from selfmoa.cli import main

    with _env_lock:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items() if k not in ("HOME", "SELFMOA_CACHE")})
        try:
            return int(main(args))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


StageRunner = Callable[[list[str], dict[str, str]], int]


async def patch_status(cluster: Cluster, path: str, status: dict[str, Any]) -> None:
    async with cluster.patch(
        f"{path}/status",
        data=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status < 400, await resp.text()


async def complete_job(cluster: Cluster, name: str) -> None:
    t = now()
    await patch_status(
        cluster,
        f"{JOBS_PATH}/{name}",
        {
            "startTime": t,
            "completionTime": t,
            "succeeded": 1,
            "active": None,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": t}],
        },
    )


async def post_stage_pod(
    cluster: Cluster,
    name: str,
    job: str,
    phase: str,
    state: dict[str, Any],
    resources: dict[str, Any] | None = None,
) -> None:
    """A Pod of stage Job `job` as its kubelet reports it: one `stage` container in `state`."""
    container: dict[str, Any] = {"name": "stage", "image": "worker"}
    if resources is not None:
        container["resources"] = resources
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"job-name": job}},
        "spec": {"containers": [container]},
        "status": {"phase": phase, "containerStatuses": [{"name": "stage", "state": state}]},
    }
    async with cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod) as resp:
        assert resp.status < 400, await resp.text()


async def fail_job(
    cluster: Cluster, name: str, message: str, attempts: int, exit_code: int = 1
) -> None:
    """What the Job controller shows once backoffLimit is exhausted, plus the failed Pod."""
    t = now()
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": t}
    await post_stage_pod(cluster, f"{name}-x{attempts}", name, "Failed", {"terminated": terminated})
    await patch_status(
        cluster,
        f"{JOBS_PATH}/{name}",
        {
            "failed": attempts,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastTransitionTime": t,
                }
            ],
        },
    )


async def mark_deployments_ready(cluster: Cluster) -> None:
    """Deployments with replicas > 0 become ready; scaled-to-zero ones lose their pods."""
    for name, dep in objects(cluster, DEPLOYMENTS).items():
        want = int(dep["spec"].get("replicas", 1))
        gen = dep["metadata"].get("generation", 1)
        st = dep.get("status") or {}
        if want != int(st.get("readyReplicas") or 0) or st.get("observedGeneration") != gen:
            await patch_status(
                cluster,
                f"/apis/apps/v1/namespaces/{NS}/deployments/{name}",
                {
                    "observedGeneration": gen,
                    "replicas": want,
                    "readyReplicas": want,
                    "availableReplicas": want,
                },
            )


async def play_one(cluster: Cluster, runner: StageRunner) -> str | None:
    """Run the first unfinished Job's command and mark it Complete (or Failed); its name."""
    for name, job in sorted(
        jobs(cluster).items(), key=lambda kv: kv[1]["metadata"]["resourceVersion"]
    ):
        if job_finished(job):
            continue
        c = container(job)
        rc = await asyncio.to_thread(runner, list(c["args"]), job_env(job))
        if rc == 0:
            await complete_job(cluster, name)
        else:
            await fail_job(cluster, name, f"stage exited with {rc}", attempts=1)
        return name
    return None


async def play_stand_ins(cluster: Cluster, n: int) -> None:
    """Finish the next `n` stage Jobs with the instant stand-in, one at a time."""
    for _ in range(n):
        await wait_for(lambda: any(not job_finished(j) for j in jobs(cluster).values()))
        await play_one(cluster, stand_in_stage)


def iter_created(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Every object the operator created (children: Jobs, Deployments, Services)."""
    for resource in (JOBS, DEPLOYMENTS, SERVICES):
        for (res, _, _), obj in list(cluster.objects.items()):
            if res == resource:
                for version in obj.history:
                    if version is not None:
                        yield json.loads(json.dumps(version, default=dict))
                        break


def stage_job_names(cluster: Cluster) -> list[str]:
    return sorted(
        n
        for n, j in jobs(cluster).items()
        if builders.LABEL_STAGE in j["metadata"].get("labels", {})
    )


async def wait_for(pred: Callable[[], Any], timeout: float = 20.0, step: float = 0.02) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {pred}")
        await asyncio.sleep(step)


def tiny_run(name: str, store: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "policy": {"model": "selfmoa/tiny"},
        "safetyReset": {"enabled": True, "steps": 4},
        "redTeam": {"promptsPerIteration": 24},
        "sampling": {"responsesPerPrompt": 2, "maxNewTokens": 24},
        "iterations": 2,
        "stopWhen": {"patience": 5},
        "storage": {"uri": f"file://{store}"},
        "serving": {"engine": "transformers"},
        "trainer": {"gpus": 0, "backoffLimit": 1},
    }
    for k, v in over.items():
        spec[k] = v
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AlignmentRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


async def apply(cluster: Cluster, run: dict[str, Any]) -> None:
    async with cluster.post(RUNS_PATH, json=run) as resp:
        assert resp.status < 400, await resp.text()


async def patch_spec(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    async with cluster.patch(
        f"{RUNS_PATH}/{name}",
        data=json.dumps({"spec": spec}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status < 400, await resp.text()


K8S_VERSION = "1.30.0"


def validate_all(cluster: Cluster) -> int:
    """Validate every child the operator created against the Kubernetes 1.30 OpenAPI schema."""
    import kubernetes_validate

    n = 0
    for obj in iter_created(cluster):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        n += 1
    return n


def events(cluster: Cluster, reason: str | None = None) -> list[dict[str, Any]]:
    out = [
        e for e in objects(cluster, EVENTS).values() if reason is None or e.get("reason") == reason
    ]
    return sorted(out, key=lambda e: e["metadata"]["resourceVersion"])


async def drive_to_end(
    cluster: Cluster,
    name: str,
    runner: StageRunner,
    *,
    timeout: float = 30.0,
    between: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Play the cluster until the run is Succeeded or Failed; `between(i)` runs after job i."""
    played = 0
    while True:

        def ready() -> Any:
            st = run_status(cluster, name)
            if st.get("phase") in ("Succeeded", "Failed"):
                return True
            return any(not job_finished(j) for j in jobs(cluster).values())

        await wait_for(ready, timeout=timeout)
        st = run_status(cluster, name)
        if st.get("phase") in ("Succeeded", "Failed"):
            return st
        if await play_one(cluster, runner) is not None:
            played += 1
            if between is not None:
                r = between(played)
                if asyncio.iscoroutine(r):
                    await r
