"""Pure readings of the run's child objects as the API returns them: which stage a Job is, whether
it finished, waits in a queue or is ready, and how to roll a serving Deployment."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from typing import Any

from selfmoa.controller import builders


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


#: Waiting reasons of a container that no retry fixes without a person (image, config).
_STUCK = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def _statuses(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    st = pod.get("status") or {}
    for kind, key in (
        ("init container", "initContainerStatuses"),
        ("container", "containerStatuses"),
    ):
        for cs in st.get(key) or []:
            yield f"{kind} {cs.get('name')}", cs


def _failure(term: Mapping[str, Any]) -> str:
    lines = str(term.get("message") or "").strip().splitlines()
    return (
        lines[-1] if lines else f"{term.get('reason') or 'Error'}, exit code {term.get('exitCode')}"
    )


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a serving Pod isn't serving, as its kubelet reports it: the newest failed (init)
    container's termination message (its last line) or reason, else a waiting reason that needs
    a person (image pull, bad config); None when nothing failed (it may just be starting)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    failed = [
        (str(term.get("finishedAt") or ""), f"{what} failed: {_failure(term)}")
        for what, cs in _statuses(pod)
        for term in ((cs.get(s) or {}).get("terminated") or {} for s in ("state", "lastState"))
        if term and term.get("exitCode", 0) != 0
    ]
    stuck = [
        f"{what} {w['reason']}" + (f": {w['message']}".splitlines()[0] if w.get("message") else "")
        for what, cs in _statuses(pod)
        if (w := (cs.get("state") or {}).get("waiting") or {}).get("reason") in _STUCK
    ]
    found = max(failed)[1] if failed else (stuck[0] if stuck else None)
    return None if found is None else f"pod {name}: {found}"[:1000]


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
