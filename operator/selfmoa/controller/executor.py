"""KubernetesExecutor: what the operator does to the cluster and the store for one run.

It is the run's observer (`selfmoa.controller.observe.RunObserver`: the run, its paths, its
store credentials, and `observe`) that also acts: takes over the store path, creates stage Jobs
(TrainJobs on several nodes), creates, rolls or scales the vLLM servers as the plan says,
patches the status, writes status.json and report.html, and deletes the children.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from selfmoa.api.spec import API_VERSION, PLURAL, AlignmentRun, AlignmentRunStatus
from selfmoa.controller import builders
from selfmoa.controller.children import rollout_patch
from selfmoa.controller.kube import KubeError, collection
from selfmoa.controller.observe import RunObserver, Snapshot, TrainJobRejected, trainjob_error
from selfmoa.controller.plan import ServingChange
from selfmoa.run import outputs
from selfmoa.run.document import adopt, fixed_fields_changed
from selfmoa.run.identity import TakeOver, take_over, wants_fresh_start
from selfmoa.run.planner import Observed, RunStage

__all__ = ["KubernetesExecutor", "Snapshot", "TrainJobRejected"]


class KubernetesExecutor(RunObserver):
    """One run's observer that also acts on the cluster and the store."""

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
        if decision.decision == "fresh":
            self.rt.finished.pop(key, None)  # its stages were just deleted
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
            key = (self.namespace, self.name)
            seconds = outputs.stage_seconds(store, observed.done, self.rt.seconds_cache.get(key))
            self.rt.seconds_cache[key] = seconds
            outputs.write_report(store, self.spec, observed.metrics, seconds)

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
        obj, created = await self.rt.kube.create(self.jobs_path, job)
        self.rt.jobs.put(obj)  # the next reconcile sees it before the watch reports it
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
            raise trainjob_error(e) from None
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
