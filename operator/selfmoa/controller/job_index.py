"""The operator's copy of the stage Jobs it watches, so a reconcile reads its run's Jobs without
listing them (what controller-runtime's cached client does for a Go operator).

Kopf's Job watch feeds it every event (`event`); a run's first reconcile lists its Jobs once
(`prime`); the executor puts each Job it creates (`put`), so a reconcile never misses its own
write. A run whose copy is older than `max_age` seconds is listed again (`jobs` answers None):
the safety net against a watch that lost an event, at one listing per resync instead of one per
reconcile.

Which of two copies of a Job is newer is decided by resourceVersion, compared as a number when
both are numbers (etcd's are); a listing taken before a deletion the watch already reported never
brings that Job back (the deleted uid is remembered for a while).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selfmoa.controller.builders import LABEL_RUN

#: (namespace, value of the Job's run label).
RunKey = tuple[str, str]


#: How long a deleted Job's uid is remembered (far longer than any listing takes).
_TOMBSTONE_S = 600.0


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _version(obj: Mapping[str, Any]) -> int | None:
    return _int((obj.get("metadata") or {}).get("resourceVersion"))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid"))


def _newer(a: int | None, b: int | None) -> bool:
    """Whether resourceVersion `a` is newer than `b` (unknown: take the newcomer)."""
    return a is None or b is None or a > b


def _later(mine: Mapping[str, Any], listed: Mapping[str, Any]) -> bool:
    """Whether the held copy is strictly newer than the listed one (both versions known)."""
    a, b = _version(mine), _version(listed)
    return a is not None and b is not None and a > b


def plan_view(job: Mapping[str, Any]) -> tuple[object, ...]:
    """What of a Job the run's plan reads (`children.read_jobs`, `queue_hold`): its identity,
    whether it is suspended (and then whether it had started), its Pod failures and successes,
    its conditions. A watch event that changes none of these (a Job starting its Pod, a status
    field the plan never reads) need not wake the run."""
    st = job.get("status") or {}
    suspended = bool((job.get("spec") or {}).get("suspend"))
    conditions = sorted(
        (str(c.get("type")), str(c.get("status"))) for c in st.get("conditions") or []
    )
    return (
        _uid(job),
        suspended,
        bool(st.get("startTime")) if suspended else None,
        _int(st.get("failed")) or 0,
        _int(st.get("succeeded")) or 0,
        tuple(conditions),
    )


def run_key(job: Mapping[str, Any]) -> RunKey | None:
    meta = job.get("metadata") or {}
    run = (meta.get("labels") or {}).get(LABEL_RUN)
    return (str(meta.get("namespace") or "default"), str(run)) if run else None


@dataclass
class JobIndex:
    clock: Callable[[], float] = time.monotonic
    _jobs: dict[RunKey, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _primed: dict[RunKey, float] = field(default_factory=dict)
    #: uids of deleted Jobs, with when the deletion was seen (a listing taken before it must not
    #: bring them back; a new Job of the same name has another uid).
    _gone: dict[str, float] = field(default_factory=dict)

    def event(self, kind: str | None, job: Mapping[str, Any]) -> bool:
        """A watch event (`kind`: ADDED, MODIFIED, DELETED, or None for Kopf's initial listing).
        True when the run must look again: the Job is new to the copy, gone, or changed in what
        the plan reads (`plan_view`). The ADDED event of a Job the operator created itself, and a
        Pod becoming active, are not worth a reconcile (a third of a stage's events or more)."""
        key = run_key(job)
        if key is None:
            return True
        meta = job["metadata"]
        if kind == "DELETED":
            self._jobs.get(key, {}).pop(str(meta["name"]), None)
            self._gone[str(meta.get("uid"))] = self.clock()
            return True
        before = self._jobs.get(key, {}).get(str(meta["name"]))
        self.put(job)
        return before is None or plan_view(before) != plan_view(job)

    def put(self, job: Mapping[str, Any]) -> None:
        """A Job as the API server returned it (created, or seen by the watch)."""
        key = run_key(job)
        if key is None or str(job["metadata"].get("uid")) in self._gone:
            return
        held = self._jobs.setdefault(key, {})
        name = str(job["metadata"]["name"])
        mine = held.get(name)
        if mine is None or _uid(mine) != _uid(job) or _newer(_version(job), _version(mine)):
            held[name] = dict(job)

    def prime(self, key: RunKey, listed: list[dict[str, Any]], version: str | None) -> None:
        """The run's Jobs as one listing, taken at resourceVersion `version`, found them."""
        now = self.clock()
        self._gone = {uid: t for uid, t in self._gone.items() if now - t < _TOMBSTONE_S}
        held = self._jobs.get(key, {})
        fresh: dict[str, dict[str, Any]] = {}
        for job in listed:
            if _uid(job) in self._gone:
                continue  # deleted after the listing was taken
            name = str(job["metadata"]["name"])
            mine = held.get(name)
            newer = mine is not None and _uid(mine) == _uid(job) and _later(mine, job)
            fresh[name] = mine if newer and mine is not None else dict(job)
        at = _int(version)
        for name, mine in held.items():
            # Not listed: created after the listing was taken (keep), or deleted before (drop).
            v = _version(mine)
            if name not in fresh and at is not None and v is not None and v > at:
                fresh[name] = mine
        self._jobs[key] = fresh
        self._primed[key] = now

    def jobs(self, key: RunKey, max_age: float) -> list[dict[str, Any]] | None:
        """The run's Jobs, or None when they must be listed (never listed, or too long ago)."""
        primed = self._primed.get(key)
        if primed is None or self.clock() - primed > max_age:
            return None
        return list(self._jobs.get(key, {}).values())

    def forget(self, key: RunKey) -> None:
        self._jobs.pop(key, None)
        self._primed.pop(key, None)
