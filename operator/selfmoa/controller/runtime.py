"""What every run's reconcile shares in one operator process: config, API client, caches."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig
from selfmoa.controller.failures import StorageConfigError
from selfmoa.controller.job_index import JobIndex
from selfmoa.controller.kube import Kube
from selfmoa.run.metrics import Metrics
from selfmoa.store import Store, open_store_for


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: How long "Kubeflow Trainer is not served" is believed before discovery asks again (an admin
#: may install it meanwhile); "served" is believed for the life of the process.
TRAINER_RECHECK_SECONDS = 60.0


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
    #: Seconds of each finished stage per run, read from its manifest once (for the report).
    seconds_cache: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    stores: dict[tuple[str, str | None, tuple[str, str] | None], Store] = field(
        default_factory=dict
    )
    #: Each run's run.json as first written (the spec its artifacts were made with).
    run_documents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: Each run's finished stages, with when the store was last listed for them (`time.monotonic`):
    #: between listings a reconcile asks only for the manifest of the stage that is running.
    finished: dict[tuple[str, str], tuple[float, frozenset[tuple[int, str]]]] = field(
        default_factory=dict
    )
    #: Every stage Job the Job watch reported, by run: a reconcile reads its Jobs from here.
    jobs: JobIndex = field(default_factory=JobIndex)
    #: Storage credentials read from each (namespace, Secret), with when (`time.monotonic`):
    #: read again after `resync_seconds`, so a rotated key is picked up within a resync.
    secrets: dict[tuple[str, str], tuple[float, tuple[str, str]]] = field(default_factory=dict)
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
            self.seconds_cache,
            self.run_documents,
            self.finished,
        ):
            d.pop(key, None)  # type: ignore[attr-defined]
        self.jobs.forget((namespace, builders.truncate(name)))

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
