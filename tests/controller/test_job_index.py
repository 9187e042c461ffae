"""The operator's copy of its Jobs (`controller.job_index`): what a reconcile reads instead of a
listing, and the races between a listing and the watch it must survive."""

from __future__ import annotations

from typing import Any

from harness import (
    Cluster,
    Operator,
    apply,
    drive_to_end,
    stage_job_names,
    stand_in_stage,
    tiny_run,
)

from selfmoa.controller.builders import LABEL_RUN
from selfmoa.controller.job_index import JobIndex

KEY = ("ml", "r")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def job(
    name: str, rv: int, uid: str | None = None, run: str | None = "r", **status: Any
) -> dict[str, Any]:
    labels = {LABEL_RUN: run} if run else {}
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": uid or f"uid-{name}",
            "resourceVersion": str(rv),
            "labels": labels,
        },
        "status": status,
    }


def names(index: JobIndex) -> dict[str, str]:
    return {
        j["metadata"]["name"]: j["metadata"]["resourceVersion"]
        for j in index.jobs(KEY, max_age=60) or []
    }


def test_a_run_never_listed_or_listed_too_long_ago_must_be_listed() -> None:
    clock = Clock()
    index = JobIndex(clock=clock)
    assert index.jobs(KEY, max_age=60) is None
    index.event("ADDED", job("r-i0-redteam", 5))  # a watch event alone is not a listing
    assert index.jobs(KEY, max_age=60) is None
    index.prime(KEY, [job("r-i0-redteam", 5)], "5")
    assert names(index) == {"r-i0-redteam": "5"}
    clock.t = 61
    assert index.jobs(KEY, max_age=60) is None
    index.prime(KEY, [job("r-i0-redteam", 5)], "9")
    assert names(index) == {"r-i0-redteam": "5"}


def test_watch_events_update_the_copy_and_an_older_one_never_wins() -> None:
    index = JobIndex(clock=Clock())
    index.prime(KEY, [], "1")
    index.event("ADDED", job("r-i0-redteam", 5))
    index.event("MODIFIED", job("r-i0-redteam", 7, succeeded=1))
    index.event("MODIFIED", job("r-i0-redteam", 6))  # late delivery of an older state
    held = index.jobs(KEY, max_age=60) or []
    assert [j["status"] for j in held] == [{"succeeded": 1}]
    index.event(None, job("r-i0-respond", 8))  # Kopf's initial listing has no type
    assert names(index) == {"r-i0-redteam": "7", "r-i0-respond": "8"}
    index.event("ADDED", job("other-i0-redteam", 9, run="other"))
    index.event("ADDED", job("no-label", 9, run=None))
    assert names(index) == {"r-i0-redteam": "7", "r-i0-respond": "8"}


def test_only_changes_the_plan_reads_wake_the_run() -> None:
    index = JobIndex(clock=Clock())
    index.prime(KEY, [], "1")
    created = job("r-i0-redteam", 5)
    index.put(created)  # the operator's own create
    assert index.event("ADDED", created) is False  # its echo from the watch
    assert index.event("MODIFIED", job("r-i0-redteam", 6, active=1)) is False
    started = job("r-i0-redteam", 7, active=1, startTime="2026-01-01T00:00:00Z")
    assert index.event("MODIFIED", started) is False
    done = job(
        "r-i0-redteam",
        8,
        succeeded=1,
        startTime="2026-01-01T00:00:00Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    assert index.event("MODIFIED", done) is True
    assert index.event("MODIFIED", {**done, "metadata": {**done["metadata"]}}) is False
    retried = job("r-i0-respond", 9, failed=1)
    assert index.event("ADDED", retried) is True  # new to the copy
    assert index.event("MODIFIED", job("r-i0-respond", 10, failed=2)) is True
    assert index.event("DELETED", job("r-i0-respond", 11, failed=2)) is True
    # A Job of the same name, made again, is another Job.
    assert index.event("ADDED", job("r-i0-redteam", 12, uid="uid-again")) is True
    suspended = job("r-i0-train", 13)
    suspended["spec"] = {"suspend": True}
    index.event("ADDED", suspended)
    assert index.event("MODIFIED", {**suspended, "spec": {"suspend": False}}) is True
    # Suspended again (a queue preempted it): whether it had started tells preempted from queued.
    preempted = job("r-i0-train", 15, startTime="2026-01-01T00:00:00Z")
    preempted["spec"] = {"suspend": True}
    assert index.event("MODIFIED", preempted) is True
    assert index.event("MODIFIED", {**preempted, "status": {}}) is True
    assert index.event("ADDED", job("no-label", 14, run=None)) is True  # not ours to judge


def test_a_deleted_job_is_not_brought_back_by_a_listing_taken_before_the_deletion() -> None:
    index = JobIndex(clock=Clock())
    index.prime(KEY, [job("r-i0-redteam", 5)], "5")
    index.event("DELETED", job("r-i0-redteam", 9))
    assert names(index) == {}
    # A listing that was in flight while the deletion happened still has it: not back.
    index.prime(KEY, [job("r-i0-redteam", 5)], "8")
    assert names(index) == {}
    # A new Job of the same name (a retry) is another object: kept.
    index.prime(KEY, [job("r-i0-redteam", 12, uid="uid-retry")], "12")
    assert names(index) == {"r-i0-redteam": "12"}


def test_a_job_the_operator_created_survives_a_listing_older_than_it() -> None:
    index = JobIndex(clock=Clock())
    index.prime(KEY, [], "3")
    index.put(job("r-i0-redteam", 10))  # the create's answer, before the watch reports it
    assert names(index) == {"r-i0-redteam": "10"}
    index.prime(KEY, [], "8")  # taken before the create
    assert names(index) == {"r-i0-redteam": "10"}
    index.prime(KEY, [], "11")  # taken after it, without it: deleted meanwhile
    assert names(index) == {}


def test_the_held_copy_wins_over_an_older_listed_one_and_forget_drops_the_run() -> None:
    index = JobIndex(clock=Clock())
    index.prime(KEY, [job("r-i0-redteam", 5)], "5")
    index.event("MODIFIED", job("r-i0-redteam", 9, succeeded=1))
    index.prime(KEY, [job("r-i0-redteam", 5)], "6")
    assert names(index) == {"r-i0-redteam": "9"}
    index.forget(KEY)
    assert index.jobs(KEY, max_age=60) is None


async def test_reconciles_read_jobs_from_the_watch_not_a_listing_each(
    cluster: Cluster, tmp_path: Any
) -> None:
    # resync 60 s: within the run every reconcile after the first reads the operator's copy.
    op = Operator(cluster, resync=60.0)
    await op.start()
    try:
        await apply(cluster, tiny_run("r", tmp_path))
        mark = len(Cluster.calls)
        st = await drive_to_end(cluster, "r", stand_in_stage)
    finally:
        await op.stop()
    assert st["phase"] == "Succeeded", st
    created = stage_job_names(cluster)
    calls = Cluster.calls[mark:]
    lists = [c for c in calls if c[0] == "GET" and c[1] == "jobs" and c[2] is None]
    posts = [c for c in calls if c[0] == "POST" and c[1] == "jobs"]
    assert len(posts) == len(created)
    # Once to prime (plus Kopf's own watch, a GET of the collection too), never once per stage.
    assert len(lists) <= 3, lists
