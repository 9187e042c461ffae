"""KubernetesExecutor: what the operator observes in and does to the cluster for one run.

Observation is cheap by design: one Job listing per reconcile (plus one Deployment listing under
vLLM, and one TrainJob listing for a run on several nodes), one store listing for finished stages,
metrics read once per iteration and cached (a finished stage's files never change), and the Pod
listing only when a Job has failed.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfmoa.api import contract
from selfmoa.api.spec import (
    API_VERSION,
    PLURAL,
    AlignmentRun,
    AlignmentRunSpec,
    AlignmentRunStatus,
    ServingEngine,
)
from selfmoa.controller import builders
from selfmoa.controller.children import (
    POD_CHECK_AFTER_S,
    _condition,
    age_seconds,
    deployment_ready,
    failure_of,
    job_key,
    pod_problem,
    queue_hold,
    rollout_patch,
    stage_pods_verdict,
)
from selfmoa.controller.kube import KubeError, collection
from selfmoa.controller.plan import Served, ServingChange
from selfmoa.controller.runtime import Runtime
from selfmoa.run import layout, outputs, stage_table
from selfmoa.run import state as run_state
from selfmoa.run.document import adopt, fixed_fields_changed
from selfmoa.run.identity import TakeOver, take_over, wants_fresh_start
from selfmoa.run.metrics import Metrics
from selfmoa.run.planner import CANNOT_START, Observed, RunStage, StageFailure
from selfmoa.store import Store, StoreError


class TrainJobRejected(RuntimeError):
    """Kubeflow Trainer's admission webhook refused a TrainJob (e.g. its runtime is missing)."""


@dataclass
class Snapshot:
    """What one observation found: the planner's facts plus the raw children."""

    observed: Observed
    #: The stage Jobs, and the TrainJobs of stages on several nodes, by (iteration, stage).
    jobs: dict[tuple[int, str], dict[str, Any]]
    attempts: dict[str, int]
    #: Under vLLM: each served model's Deployment as the planner sees it, the spec hash of the
    #: one the spec asks for, and the live objects (what a rollout patches).
    serving: dict[str, Served] = field(default_factory=dict)
    wanted_hash: dict[str, str | None] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Seconds until the running stage's Pods are worth asking about (see `_stage_pods`): the
    #: next reconcile comes no later than that.
    recheck_in: float | None = None


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
        self.deployments_path = collection("apps/v1", "deployments", namespace)
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
                    message, code = await self._failure_message(job, key, trainjob=key in trainjobs)
                    failure = StageFailure(key[0], key[1], message, exit_code=code)
            elif _condition(job, "Complete") is not None:
                if failure is None:
                    failure = StageFailure(
                        key[0], key[1], f"the {kind} succeeded but the stage wrote no manifest"
                    )
            elif running is None:
                running = key
                held = queue_hold(job, key)
        recheck_in: float | None = None
        if running is not None and held is None and running not in trainjobs:
            held, stuck, recheck_in = await self._stage_pods(jobs[running], running)
            if stuck is not None and failure is None:
                failure = StageFailure(*running, stuck, reason=CANNOT_START)
        observed = Observed(
            done=done,
            metrics=metrics,
            running=running,
            failure=failure,
            held=held,
            exported=exported,
        )
        snap = Snapshot(observed=observed, jobs=jobs, attempts=attempts, recheck_in=recheck_in)
        if self.spec.serving.engine == ServingEngine.vllm:
            await self._observe_serving(snap)
        return snap

    async def _observe_serving(self, snap: Snapshot) -> None:
        """Each served model's Deployment (one listing), and its Pods' problem when it should
        serve but isn't ready (a Pod listing only then)."""
        existing = {
            d["metadata"]["name"]: d
            for d in await self.rt.kube.list(self.deployments_path, self.labels)
        }
        for model in self.spec.models():
            dep, _ = self._serving_objects(model, replicas=0)
            name = dep["metadata"]["name"]
            snap.wanted_hash[model] = builders.spec_hash_of(dep)
            cur = existing.get(name)
            if cur is None:
                continue
            snap.deployments[model] = cur
            replicas = int((cur.get("spec") or {}).get("replicas") or 0)
            ready = deployment_ready(cur)
            problem = None
            if replicas > 0 and not ready:
                selector = dict(cur["spec"]["selector"]["matchLabels"])
                pods = await self.rt.kube.list(collection("v1", "pods", self.namespace), selector)
                problem = next((p for p in map(pod_problem, pods) if p), None)
            snap.serving[model] = Served(
                builders.spec_hash_of(cur), replicas, ready and replicas > 0, problem
            )

    def _serving_objects(self, model: str, *, replicas: int) -> tuple[dict[str, Any], ...]:
        return builders.serving_objects(
            run=self.name,
            namespace=self.namespace,
            spec=self.spec,
            model=model,
            replicas=replicas,
            config=self.rt.config,
            owner=self.owner,
        )

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

    async def _pods(self, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self.rt.kube.list(collection("v1", "pods", self.namespace), selector)

    async def _stage_pods(
        self, job: Mapping[str, Any], key: tuple[int, str]
    ) -> tuple[tuple[str, str] | None, str | None, float | None]:
        """For an active stage Job, what its Pods say (`stage_pods_verdict`), and the seconds
        until they are worth asking. Pods are listed only once the Job is past its first
        seconds, so a stage that starts normally costs no request."""
        age = age_seconds(job, self.rt.now())
        if not int((job.get("status") or {}).get("active") or 0) or age is None:
            return None, None, None
        if age < POD_CHECK_AFTER_S:
            return None, None, POD_CHECK_AFTER_S - age + 1
        pods = await self._pods({"job-name": job["metadata"]["name"]})
        return (*stage_pods_verdict(pods, key), None)

    async def _failure_message(
        self, job: Mapping[str, Any], key: tuple[int, str], *, trainjob: bool = False
    ) -> tuple[str, int | None]:
        selector = (
            builders.pod_selector(self.name, *key)
            if trainjob
            else {"job-name": job["metadata"]["name"]}
        )
        return failure_of(await self._pods(selector), job, trainjob=trainjob)

    def adopt_store(self, artifacts: str | None) -> TakeOver:
        """What this run does with its store path (see `selfmoa.run.identity`): resume it, take
        over an earlier run's finished stages (saying so), start fresh, or refuse (a fixed field
        edited, another run's stages under a different spec). Blocking I/O: call it in a thread.

        The first reconcile writes run.json with the object's uid; later ones compare against
        the copy kept in memory, so an edit of the policy, data, judges, objective or storage is
        refused instead of half-applied (stages already done used the old values).
        """
        if artifacts and artifacts != self.run_uri:
            return TakeOver(
                "refuse",
                f"spec.storage: changed after the run started (its artifacts are in {artifacts}); "
                "revert it or create a new AlignmentRun",
            )
        meta = (self.owner or {}).get("metadata") or {}
        uid = str(meta["uid"]) if meta.get("uid") else None
        fresh = wants_fresh_start(meta.get("annotations"))
        key = (self.namespace, self.name)
        run = AlignmentRun(
            metadata={"name": self.name, "namespace": self.namespace}, spec=self.spec
        )
        saved = self.rt.run_documents.get(key)
        if saved is not None and (saved.get("metadata") or {}).get("uid") == uid:
            changed = fixed_fields_changed(saved, run)
            return take_over(saved, uid=uid, finished=0, changed=changed, fresh=fresh)
        decision, doc = adopt(self._store(), run, uid=uid, fresh=fresh, now=self.rt.now())
        if doc is not None:
            self.rt.run_documents[key] = doc
        return decision

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

    async def apply_serving(self, changes: Sequence[ServingChange], snap: Snapshot) -> None:
        """Create, roll or scale the vLLM Deployments (and Services) as planned."""
        svc_path = collection("v1", "services", self.namespace)
        for change in changes:
            dep, svc = self._serving_objects(change.model, replicas=change.replicas)
            name = dep["metadata"]["name"]
            if change.kind == "create":
                # Service first: the Deployment's existence is what says both were made, so a
                # failed Service create is retried on the next reconcile (409 = already there).
                await self.rt.kube.create(svc_path, svc)
                await self.rt.kube.create(self.deployments_path, dep)
            elif change.kind == "roll":
                patch = rollout_patch(snap.deployments[change.model], dep)
                await self.rt.kube.patch(f"{self.deployments_path}/{name}", patch)
            else:
                patch = {"spec": {"replicas": change.replicas}}
                await self.rt.kube.patch(f"{self.deployments_path}/{name}", patch)

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
