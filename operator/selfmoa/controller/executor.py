"""KubernetesExecutor: what the operator observes in and does to the cluster for one run.

Observation is cheap by design: one Job listing per reconcile (plus one Deployment listing under
vLLM, and one TrainJob listing for a run on several nodes), one store listing for finished stages,
metrics read once per iteration and cached (a finished stage's files never change), and the Pod
listing only when a Job has failed.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selfmoa.api import contract
from selfmoa.api.spec import (
    API_VERSION,
    PLURAL,
    AlignmentRun,
    AlignmentRunSpec,
    AlignmentRunStatus,
)
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.failures import StorageConfigError
from selfmoa.controller.kube import Kube, KubeError, collection
from selfmoa.run import layout, outputs, stage_table
from selfmoa.run import state as run_state
from selfmoa.run.document import fixed_fields_changed, run_document
from selfmoa.run.metrics import Metrics
from selfmoa.run.planner import Action, Observed, RunStage, StageFailure
from selfmoa.store import Store, StoreError, open_store_for


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: How long "Kubeflow Trainer is not served" is believed before discovery asks again (an admin
#: may install it meanwhile); "served" is believed for the life of the process.
TRAINER_RECHECK_SECONDS = 60.0


class TrainJobRejected(RuntimeError):
    """Kubeflow Trainer's admission webhook refused a TrainJob (e.g. its runtime is missing)."""


@dataclass
class Runtime:
    """State shared by every run's reconcile in one operator process."""

    config: OperatorConfig
    kube: Kube
    #: The credentials Kopf logged in with (`kopf.ConnectionInfo`), shared with `kube`.
    connection: Any = None
    #: Seconds between safety-net reconciles when no watch event arrives.
    resync_seconds: float = 60.0
    now: Callable[[], str] = utcnow
    triggers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    #: The status this process last wrote per run (the watch may not have delivered it yet).
    last_status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Metrics already read per run (a finished evaluate stage never changes).
    metrics_cache: dict[tuple[str, str], dict[int, Metrics]] = field(default_factory=dict)
    stores: dict[tuple[str, str | None, tuple[str, str] | None], Store] = field(
        default_factory=dict
    )
    #: Each run's run.json as first written (the spec its artifacts were made with).
    run_documents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: The ClusterTrainingRuntime of multi-node training stages (TrainJobs).
    #: Whether the cluster serves trainer.kubeflow.org/v1alpha1, and when that was last asked
    #: (`time.monotonic`); None until a run on several nodes needs to know.
    trainer_served: bool | None = None
    trainer_checked: float = 0.0

    def trigger(self, namespace: str, name: str) -> asyncio.Event:
        return self.triggers.setdefault((namespace, name), asyncio.Event())

    def kick(self, namespace: str, name: str) -> None:
        """Make the run's reconcile loop run now (a Job or the run changed)."""
        self.trigger(namespace, name).set()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for d in (
            self.triggers,
            self.last_status,
            self.phases,
            self.metrics_cache,
            self.run_documents,
        ):
            d.pop(key, None)  # type: ignore[attr-defined]

    async def trainer_api(self) -> bool:
        """Whether the cluster serves Kubeflow Trainer's TrainJobs (API discovery, cached)."""
        if self.trainer_served:
            return True
        if self.trainer_served is False and (
            time.monotonic() - self.trainer_checked < TRAINER_RECHECK_SECONDS
        ):
            return False
        doc = await self.kube.get(builders.TRAINER_DISCOVERY_PATH)
        names = {r.get("name") for r in (doc or {}).get("resources") or []}
        self.trainer_served = builders.TRAINJOB_PLURAL in names
        self.trainer_checked = time.monotonic()
        return self.trainer_served

    def store(
        self, uri: str, spec: AlignmentRunSpec, credentials: tuple[str, str] | None = None
    ) -> Store:
        key = (uri, spec.storage.endpoint, credentials)
        if key not in self.stores:
            try:
                self.stores[key] = open_store_for(uri, spec.storage, credentials)
            except Exception as e:  # a URI no store can open: retrying won't help
                raise StorageConfigError(f"{uri}: {e}") from e
        return self.stores[key]


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def job_key(job: Mapping[str, Any]) -> tuple[int, str] | None:
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels[builders.LABEL_ITERATION]), str(labels[builders.LABEL_STAGE])
    except (KeyError, ValueError):
        return None


def job_seconds(job: Mapping[str, Any]) -> float | None:
    st = job.get("status") or {}
    start, end = st.get("startTime"), st.get("completionTime")
    if not start or not end:
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def queue_hold(job: Mapping[str, Any], key: tuple[int, str]) -> tuple[str, str] | None:
    """(reason, message) when a suspended Job or TrainJob waits for a queue (Kueue admits it by
    unsuspending it and preempts it by suspending it again); None when it is not held. A
    TrainJob has no startTime: a preempted one reads as waiting for admission."""
    if not (job.get("spec") or {}).get("suspend"):
        return None
    what = f"stage {key[1]} of iteration {key[0]}"
    queue = ((job.get("metadata") or {}).get("labels") or {}).get(builders.QUEUE_LABEL)
    where = f" in queue {queue}" if queue else ""
    if (job.get("status") or {}).get("startTime"):
        return "Preempted", f"{what} was preempted{where}; it resumes when admitted again"
    return "WaitingForAdmission", f"{what} waits for admission{where}"


def deployment_ready(dep: Mapping[str, Any]) -> bool:
    """Every wanted replica of the *current* spec is ready (a status from before a rescale or a
    rollout doesn't count): generation spreads over all of them."""
    st = dep.get("status") or {}
    gen = (dep.get("metadata") or {}).get("generation")
    current = gen is None or st.get("observedGeneration") == gen
    want = max(1, int((dep.get("spec") or {}).get("replicas") or 1))
    return current and int(st.get("readyReplicas") or 0) >= want


def rollout_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that makes `current`'s pod template and replicas those of `desired`.

    Merge patches replace lists whole (containers, env, volumes); pod-spec keys the new
    template no longer has are removed explicitly with null."""
    want = copy.deepcopy(dict(desired["spec"]))
    cur_pod = ((current.get("spec") or {}).get("template") or {}).get("spec") or {}
    pod = want["template"]["spec"]
    for key in cur_pod:
        pod.setdefault(key, None)
    return {"spec": {"template": want["template"], "replicas": want["replicas"]}}


@dataclass
class Snapshot:
    """What one observation found: the planner's facts plus the raw children."""

    observed: Observed
    #: The stage Jobs, and the TrainJobs of stages on several nodes, by (iteration, stage).
    jobs: dict[tuple[int, str], dict[str, Any]]
    attempts: dict[str, int]


class KubernetesExecutor:
    def __init__(
        self,
        rt: Runtime,
        *,
        name: str,
        namespace: str,
        spec: AlignmentRunSpec,
        owner: Mapping[str, Any] | None,
    ) -> None:
        self.rt, self.name, self.namespace, self.spec, self.owner = rt, name, namespace, spec, owner
        self.run_uri = layout.run_uri(spec.storage.uri, namespace, name)
        self.jobs_path = collection("batch/v1", "jobs", namespace)
        self.trainjobs_path = collection(
            builders.TRAINER_API_VERSION, builders.TRAINJOB_PLURAL, namespace
        )
        #: Whether the cluster serves TrainJobs, as `observe` found (None: it didn't ask).
        self.trainer_served: bool | None = None
        self.labels = {builders.LABEL_RUN: builders.truncate(name)}
        #: The run's storage credentials (from `spec.storage.secretRef`), read by `open`.
        self.credentials: tuple[str, str] | None = None

    async def open(self) -> None:
        """Read the storage Secret the run names, so the operator reads its store with the
        same credentials as its Jobs (the operator's own, e.g. IRSA, when it names none)."""
        ref = self.spec.storage.secret_ref
        if not ref or not self.run_uri.startswith("s3://"):
            return  # a file:// store needs no credentials
        path = f"{collection('v1', 'secrets', self.namespace)}/{ref}"
        secret = await self.rt.kube.get(path)
        if secret is None:
            raise StoreError(
                f"storage.secretRef: Secret {ref!r} not found in namespace {self.namespace}"
            )
        data = secret.get("data") or {}
        try:
            key_id, key = (base64.b64decode(data[k]).decode() for k in contract.STORAGE_SECRET_KEYS)
        except (KeyError, ValueError):
            raise StoreError(
                f"storage.secretRef: Secret {ref!r} needs the keys "
                f"{' and '.join(contract.STORAGE_SECRET_KEYS)}"
            ) from None
        self.credentials = (key_id, key)

    def _store(self) -> Store:
        return self.rt.store(self.run_uri, self.spec, self.credentials)

    # ------------------------------------------------------------------ observe

    async def observe(self) -> Snapshot:
        jobs_task = asyncio.create_task(self.rt.kube.list(self.jobs_path, self.labels))
        # Only a run on several nodes has TrainJobs: no request for the others.
        multinode = self.spec.trainer.nodes > 1
        trainjobs_task = asyncio.create_task(self._list_trainjobs()) if multinode else None
        done, metrics, exported = await asyncio.to_thread(self._read_store)
        raw_jobs = await jobs_task
        raw_trainjobs = await trainjobs_task if trainjobs_task is not None else []
        jobs: dict[tuple[int, str], dict[str, Any]] = {}
        for job in raw_jobs:
            key = job_key(job)
            if key is not None and builders.LABEL_COMPONENT in job["metadata"].get("labels", {}):
                jobs[key] = job
        trainjobs: set[tuple[int, str]] = set()
        for tj in raw_trainjobs:
            key = job_key(tj)
            labels = tj["metadata"].get("labels", {})
            # A Job of the same stage (made before trainer.nodes changed) is the one that counts.
            if key is not None and builders.LABEL_COMPONENT in labels and key not in jobs:
                jobs[key] = tj
                trainjobs.add(key)
        running: tuple[int, str] | None = None
        held: tuple[str, str] | None = None
        failure: StageFailure | None = None
        attempts: dict[str, int] = {}
        order = self._order()
        for key in sorted(jobs, key=lambda k: order.get(k, 1 << 30)):
            job = jobs[key]
            failed = int((job.get("status") or {}).get("failed") or 0)
            if failed:
                attempts[f"{layout.iteration_dir(key[0])}/{key[1]}"] = failed
            if key in done or key not in order:
                continue
            # A TrainJob's Complete and Failed conditions are a Job's (see builders.trainjob).
            kind = "TrainJob" if key in trainjobs else "Job"
            if _condition(job, "Failed") is not None:
                if failure is None:
                    message = await self._failure_message(job, key, trainjob=key in trainjobs)
                    failure = StageFailure(key[0], key[1], message)
            elif _condition(job, "Complete") is not None:
                if failure is None:
                    failure = StageFailure(
                        key[0], key[1], f"the {kind} succeeded but the stage wrote no manifest"
                    )
            elif running is None:
                running = key
                held = queue_hold(job, key)
        observed = Observed(
            done=done,
            metrics=metrics,
            running=running,
            failure=failure,
            held=held,
            exported=exported,
        )
        return Snapshot(observed=observed, jobs=jobs, attempts=attempts)

    async def _list_trainjobs(self) -> list[dict[str, Any]]:
        """The run's TrainJobs; none when the cluster does not serve them (the reconcile then
        fails the run, see `trainer_missing`)."""
        self.trainer_served = await self.rt.trainer_api()
        if not self.trainer_served:
            return []
        try:
            return await self.rt.kube.list(self.trainjobs_path, self.labels)
        except KubeError as e:
            raise _trainjob_error(e) from None

    def trainer_missing(self, action: Action, observed: Observed) -> str | None:
        """Why the run can't go on (the cluster serves no TrainJobs but it needs them), or None.

        Asked before a stage starts: the run's first one (so that it fails before any work) and
        every training stage."""
        if self.spec.trainer.nodes <= 1 or self.trainer_served is not False:
            return None
        if not isinstance(action, RunStage):
            return None
        first = not observed.done and observed.running is None
        ahead = any(builders.runs_as_trainjob(self.spec, s) for _, s in self._order())
        if builders.runs_as_trainjob(self.spec, action.stage) or (first and ahead):
            return builders.not_installed_message(self.spec, self.rt.config.training_runtime)
        return None

    def _order(self) -> dict[tuple[int, str], int]:
        stages = stage_table.run_stages(
            self.spec.iterations,
            reset=self.spec.safety_reset.enabled,
            export=self.spec.output is not None,
        )
        return {key: i for i, key in enumerate(stages)}

    def _read_store(self) -> tuple[frozenset[tuple[int, str]], dict[int, Metrics], str | None]:
        store = self._store()
        done = run_state.finished_stages(store, self.spec)
        key = (self.namespace, self.name)
        metrics = run_state.read_metrics(store, done, self.rt.metrics_cache.get(key))
        self.rt.metrics_cache[key] = metrics
        return done, metrics, run_state.read_exported(store, done)

    async def _failure_message(
        self, job: Mapping[str, Any], key: tuple[int, str], *, trainjob: bool = False
    ) -> str:
        """The failed pod's termination message (what the stage wrote), else the Job's (or the
        TrainJob's Failed condition's) message."""
        selector = (
            builders.pod_selector(self.name, *key)
            if trainjob
            else {"job-name": job["metadata"]["name"]}
        )
        pods = await self.rt.kube.list(collection("v1", "pods", self.namespace), selector)
        best: tuple[str, str] | None = None
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                    "terminated"
                )
                if term and term.get("exitCode", 0) != 0:
                    msg = str(term.get("message") or term.get("reason") or "").strip()
                    when = str(term.get("finishedAt") or "")
                    if msg and (best is None or when >= best[0]):
                        best = (when, msg)
        if best is not None:
            # Logs as the fallback message can be long: the last line is the error line.
            return best[1].splitlines()[-1][:1000]
        cond = _condition(job, "Failed") or {}
        what = "the TrainJob failed" if trainjob else "the Job failed"
        return str(cond.get("message") or cond.get("reason") or what)

    def spec_change_refused(self, artifacts: str | None) -> str | None:
        """Why the current spec must not run (a field fixed at the start was edited), or None.

        The first reconcile writes run.json; later ones compare against it, so an edit of the
        policy, data, judges, objective or storage is refused instead of half-applied (stages
        already done used the old values). Blocking I/O: call it in a thread.
        """
        if artifacts and artifacts != self.run_uri:
            return (
                f"spec.storage: changed after the run started (its artifacts are in {artifacts}); "
                "revert it or create a new AlignmentRun"
            )
        key = (self.namespace, self.name)
        run = AlignmentRun(
            metadata={"name": self.name, "namespace": self.namespace}, spec=self.spec
        )
        saved = self.rt.run_documents.get(key)
        if saved is None:
            store = self._store()
            try:
                saved = store.read_json(layout.RUN_JSON)
            except FileNotFoundError:
                saved = run_document(run)
                store.write_json(layout.RUN_JSON, saved)
            self.rt.run_documents[key] = saved
        changed = fixed_fields_changed(saved, run)
        if not changed:
            return None
        return (
            f"spec.{changed[0]}: changed after the run started, which would mix two runs' "
            "artifacts; revert it, or create a new AlignmentRun for the new spec"
        )

    def write_outputs(
        self, status: AlignmentRunStatus, observed: Observed, *, report: bool
    ) -> None:
        """status.json (and report.html when `report`) at the run's root. Blocking I/O."""
        store = self._store()
        outputs.write_status(store, status)
        if report:
            seconds = outputs.stage_seconds(store, observed.done)
            outputs.write_report(store, self.spec, observed.metrics, seconds)

    # ------------------------------------------------------------------ act

    async def start_stage(self, action: RunStage) -> bool:
        """Create the stage's Job (a TrainJob on several nodes); False when it already existed
        (adopted, not duplicated)."""
        if builders.runs_as_trainjob(self.spec, action.stage):
            return await self._start_trainjob(action)
        job = builders.stage_job(
            run=self.name,
            namespace=self.namespace,
            spec=self.spec,
            iteration=action.iteration,
            stage=action.stage,
            parent=action.parent,
            config=self.rt.config,
            owner=self.owner,
        )
        _, created = await self.rt.kube.create(self.jobs_path, job)
        return created

    async def _start_trainjob(self, action: RunStage) -> bool:
        def build() -> dict[str, Any]:
            return builders.train_job(
                run=self.name,
                namespace=self.namespace,
                spec=self.spec,
                iteration=action.iteration,
                stage=action.stage,
                parent=action.parent,
                config=self.rt.config,
                owner=self.owner,
                runtime=self.rt.config.training_runtime,
            )

        # The first build imports the Trainer models (a second or so): not on the event loop.
        obj = await asyncio.to_thread(build)
        try:
            _, created = await self.rt.kube.create(self.trainjobs_path, obj)
        except KubeError as e:
            raise _trainjob_error(e) from None
        return created

    async def ensure_serving(self, replicas: Mapping[str, int]) -> set[str]:
        """Create/scale the vLLM Deployments + Services; the models whose server is ready."""
        if not replicas:
            return set()
        dep_path = collection("apps/v1", "deployments", self.namespace)
        svc_path = collection("v1", "services", self.namespace)
        existing = {
            d["metadata"]["name"]: d for d in await self.rt.kube.list(dep_path, self.labels)
        }
        ready: set[str] = set()
        for model, want in replicas.items():
            dep, svc = builders.serving_objects(
                run=self.name,
                namespace=self.namespace,
                spec=self.spec,
                model=model,
                replicas=want,
                config=self.rt.config,
                owner=self.owner,
            )
            name = dep["metadata"]["name"]
            cur = existing.get(name)
            if cur is None:
                # Service first: the Deployment's existence is what says both were made, so a
                # failed Service create is retried on the next reconcile (409 = already there).
                await self.rt.kube.create(svc_path, svc)
                await self.rt.kube.create(dep_path, dep)
                continue
            if builders.spec_hash_of(cur) != builders.spec_hash_of(dep):
                # The serving spec changed (image, args, resources): roll the Deployment.
                await self.rt.kube.patch(f"{dep_path}/{name}", rollout_patch(cur, dep))
                continue
            if (cur.get("spec") or {}).get("replicas") != want:
                await self.rt.kube.patch(f"{dep_path}/{name}", {"spec": {"replicas": want}})
                continue
            if want > 0 and deployment_ready(cur):
                ready.add(model)
        return ready

    async def patch_status(self, status: Mapping[str, Any]) -> None:
        path = f"{collection(API_VERSION, PLURAL, self.namespace)}/{self.name}/status"
        await self.rt.kube.patch(path, {"status": dict(status)})

    async def cleanup(self) -> int:
        """Delete every child of the run (Jobs, TrainJobs, Deployments, Services); artifacts
        stay."""
        n = 0
        for api, plural in (("batch/v1", "jobs"), ("apps/v1", "deployments"), ("v1", "services")):
            path = collection(api, plural, self.namespace)
            for obj in await self.rt.kube.list(path, self.labels):
                n += await self.rt.kube.delete(f"{path}/{obj['metadata']['name']}")
        if await self.rt.trainer_api():
            try:
                trainjobs = await self.rt.kube.list(self.trainjobs_path, self.labels)
            except KubeError as e:
                # Without the chart's TrainJob RBAC the operator made none to delete (and owner
                # references collect any that exist).
                if e.status not in (403, 404):
                    raise
                trainjobs = []
            for obj in trainjobs:
                n += await self.rt.kube.delete(f"{self.trainjobs_path}/{obj['metadata']['name']}")
        return n


def _trainjob_error(e: KubeError) -> Exception:
    """A TrainJob request's error in words a user can act on: Trainer's webhook refusing the
    TrainJob (permanent), or the operator lacking the chart's TrainJob RBAC (an admin's fix)."""
    text = str(e)
    if e.status == 403 and "admission webhook" in text:
        return TrainJobRejected(f"Kubeflow Trainer refused the TrainJob: {text}")
    if e.status == 403:
        return KubeError(
            403,
            f"{text.removeprefix(f'HTTP {e.status}: ')}; TrainJobs need the chart value "
            "kubeflowTrainer.enabled=true",
        )
    return e
