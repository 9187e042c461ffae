"""What the operator observes of one run: its store (finished stages, metrics, the export), its
stage Jobs and TrainJobs, and under vLLM its serving Deployments, read into the planner's facts
plus the raw children they came from (`Snapshot`).

Observation is cheap by design: the run's Jobs come from the operator's copy that the Job watch
keeps (`JobIndex`; listed once, then once per resync), the storage Secret is read once per resync,
one Deployment listing under vLLM and one TrainJob listing for a run on several nodes, one store
listing for finished stages,
metrics read once per iteration and cached (a finished stage's files never change), and the Pod
listing only when a Job has failed, a new stage's Pods are past their first seconds, or a server
that should serve isn't ready.

`RunObserver` holds what observing and acting share (the run, its paths, its store credentials);
the executor (`selfmoa.controller.executor.KubernetesExecutor`) is the observer that also acts.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from selfmoa.api import stage_container
from selfmoa.api.spec import AlignmentRunSpec, ServingEngine
from selfmoa.controller import builders
from selfmoa.controller.children import (
    POD_CHECK_AFTER_S,
    JobsReading,
    age_seconds,
    deployment_ready,
    failure_of,
    pod_problem,
    read_jobs,
    stage_jobs,
    stage_pods_verdict,
)
from selfmoa.controller.kube import KubeError, collection
from selfmoa.controller.plan import Served
from selfmoa.controller.runtime import Runtime
from selfmoa.run import layout, stage_table
from selfmoa.run import state as run_state
from selfmoa.run.metrics import Metrics
from selfmoa.run.planner import CANNOT_START, Observed, StageFailure
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


class RunObserver:
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
        read = self.rt.secrets.get((self.namespace, ref))
        if read is not None and time.monotonic() - read[0] < self.rt.resync_seconds:
            self.credentials = read[1]
            return
        path = f"{collection('v1', 'secrets', self.namespace)}/{ref}"
        secret = await self.rt.kube.get(path)
        if secret is None:
            raise StoreError(
                f"storage.secretRef: Secret {ref!r} not found in namespace {self.namespace}"
            )
        data = secret.get("data") or {}
        try:
            key_id, key = (
                base64.b64decode(data[k]).decode() for k in stage_container.STORAGE_SECRET_KEYS
            )
        except (KeyError, ValueError):
            raise StoreError(
                f"storage.secretRef: Secret {ref!r} needs the keys "
                f"{' and '.join(stage_container.STORAGE_SECRET_KEYS)}"
            ) from None
        self.credentials = (key_id, key)
        self.rt.secrets[(self.namespace, ref)] = (time.monotonic(), self.credentials)

    def _store(self) -> Store:
        return self.rt.store(self.run_uri, self.spec, self.credentials)

    async def observe(self) -> Snapshot:
        jobs, trainjobs, (done, metrics, exported) = await self._list()
        reading = read_jobs(jobs, done, self._order())
        failure = await self._ended(jobs, trainjobs, reading)
        running, held = reading.running, reading.held
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
        snap = Snapshot(
            observed=observed, jobs=jobs, attempts=reading.attempts, recheck_in=recheck_in
        )
        if self.spec.serving.engine == ServingEngine.vllm:
            await self._observe_serving(snap)
        return snap

    async def _list(
        self,
    ) -> tuple[
        dict[tuple[int, str], dict[str, Any]],
        set[tuple[int, str]],
        tuple[frozenset[tuple[int, str]], dict[int, Metrics], str | None],
    ]:
        """The stage Jobs and TrainJobs (`stage_jobs`), then what the store holds.

        In that order, never at once: a stage writes its manifest before its Pod ends, so a Job
        seen complete has its manifest in a store read that starts afterwards. A store read that
        started first could miss a manifest whose Job then completes before the Jobs are read,
        and the stage would be failed as "succeeded but wrote no manifest" (seen at 50 runs)."""
        # Only a run on several nodes has TrainJobs: no request for the others.
        multinode = self.spec.trainer.nodes > 1
        trainjobs_task = asyncio.create_task(self._list_trainjobs()) if multinode else None
        raw_jobs = await self._jobs()
        raw_trainjobs = await trainjobs_task if trainjobs_task is not None else []
        stored = await asyncio.to_thread(self._read_store)
        return (*stage_jobs(raw_jobs, raw_trainjobs), stored)

    async def _jobs(self) -> list[dict[str, Any]]:
        """The run's stage Jobs from the operator's copy (`JobIndex`), listed when it has none
        or an old one."""
        key = (self.namespace, self.labels[builders.LABEL_RUN])
        held = self.rt.jobs.jobs(key, max_age=self.rt.resync_seconds)
        if held is not None:
            return held
        listed, version = await self.rt.kube.list_at(self.jobs_path, self.labels)
        self.rt.jobs.prime(key, listed, version)
        return self.rt.jobs.jobs(key, max_age=float("inf")) or []

    async def _ended(
        self,
        jobs: Mapping[tuple[int, str], Mapping[str, Any]],
        trainjobs: set[tuple[int, str]],
        reading: JobsReading,
    ) -> StageFailure | None:
        """The failure of the first stage whose Job ended without its manifest (its Pods say
        why a failed one failed)."""
        if reading.ended is None:
            return None
        key, how = reading.ended
        trainjob = key in trainjobs
        if how == "Complete":
            kind = "TrainJob" if trainjob else "Job"
            return StageFailure(*key, f"the {kind} succeeded but the stage wrote no manifest")
        message, code = await self._failure_message(jobs[key], key, trainjob=trainjob)
        return StageFailure(*key, message, exit_code=code)

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
            raise trainjob_error(e) from None

    def _order(self) -> dict[tuple[int, str], int]:
        stages = stage_table.stages_of_run(
            self.spec.iterations,
            reset=self.spec.safety_reset.enabled,
            export=self.spec.output is not None,
        )
        return {key: i for i, key in enumerate(stages)}

    def _read_store(self) -> tuple[frozenset[tuple[int, str]], dict[int, Metrics], str | None]:
        store = self._store()
        key = (self.namespace, self.name)
        listed_at, known = self.rt.finished.get(key, (0.0, None))
        if time.monotonic() - listed_at >= self.rt.resync_seconds:
            # Once per resync, a listing: a manifest deleted by hand (to run a stage again) is
            # seen, and nothing relies on a copy older than that.
            listed_at, known = time.monotonic(), None
        done = run_state.finished_stages(store, self.spec, known)
        self.rt.finished[key] = (listed_at, done)
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
        if age is None:
            return None, None, None
        if age < POD_CHECK_AFTER_S:
            return None, None, POD_CHECK_AFTER_S - age + 1
        if not int((job.get("status") or {}).get("active") or 0):
            # No Pod yet. Its coming doesn't wake the run (`JobIndex.event`): look again.
            return None, None, float(POD_CHECK_AFTER_S)
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


def trainjob_error(e: KubeError) -> Exception:
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
