"""Pure readings of the run's child objects as the API returns them: which stage a Job is, whether
it finished, waits in a queue or is ready, and how to roll a serving Deployment."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from selfmoa.controller import builders
from selfmoa.run import layout


def true_condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The object's condition of type `ctype` when its status is True, else None."""
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


def stage_jobs(
    jobs: list[dict[str, Any]], trainjobs: list[dict[str, Any]]
) -> tuple[dict[tuple[int, str], dict[str, Any]], set[tuple[int, str]]]:
    """The run's stage Jobs and TrainJobs by (iteration, stage), and which of them are
    TrainJobs. A Job of the same stage as a TrainJob (made before trainer.nodes changed) is
    the one that counts."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for job in jobs:
        key = job_key(job)
        if key is not None and builders.LABEL_COMPONENT in job["metadata"].get("labels", {}):
            by_key[key] = job
    trained: set[tuple[int, str]] = set()
    for tj in trainjobs:
        key = job_key(tj)
        labels = tj["metadata"].get("labels", {})
        if key is not None and builders.LABEL_COMPONENT in labels and key not in by_key:
            by_key[key] = tj
            trained.add(key)
    return by_key, trained


@dataclass(frozen=True)
class JobsReading:
    """What the stage Jobs of a run say, read in stage order (`read_jobs`)."""

    #: The first unfinished stage whose Job ended anyway: failed, or complete without the
    #: stage's manifest.
    ended: tuple[tuple[int, str], Literal["Failed", "Complete"]] | None = None
    #: The first stage whose Job is still on, and why it doesn't run yet (a queue's hold).
    running: tuple[int, str] | None = None
    held: tuple[str, str] | None = None
    #: Failed attempts per stage (`iter-NNN/stage`), finished stages included.
    attempts: dict[str, int] = field(default_factory=dict)


def read_jobs(
    jobs: Mapping[tuple[int, str], Mapping[str, Any]],
    done: frozenset[tuple[int, str]],
    order: Mapping[tuple[int, str], int],
) -> JobsReading:
    """Read the stage Jobs (TrainJobs alike: their Complete and Failed conditions are a Job's,
    see builders.trainjob) of the stages in `order` that aren't `done`."""
    ended: tuple[tuple[int, str], Literal["Failed", "Complete"]] | None = None
    running: tuple[int, str] | None = None
    held: tuple[str, str] | None = None
    attempts: dict[str, int] = {}
    for key in sorted(jobs, key=lambda k: order.get(k, 1 << 30)):
        job = jobs[key]
        failed = int((job.get("status") or {}).get("failed") or 0)
        if failed:
            attempts[f"{layout.iteration_dir(key[0])}/{key[1]}"] = failed
        if key in done or key not in order:
            continue
        if true_condition(job, "Failed") is not None:
            ended = ended or (key, "Failed")
        elif true_condition(job, "Complete") is not None:
            ended = ended or (key, "Complete")
        elif running is None:
            running, held = key, queue_hold(job, key)
    return JobsReading(ended=ended, running=running, held=held, attempts=attempts)


def _seconds(start: str | None, end: str | None) -> float | None:
    """Seconds from one API timestamp (RFC 3339, `...Z`) to another; None if either is unset."""
    if not start or not end:
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def job_seconds(job: Mapping[str, Any]) -> float | None:
    st = job.get("status") or {}
    return _seconds(st.get("startTime"), st.get("completionTime"))


def age_seconds(obj: Mapping[str, Any], now: str) -> float | None:
    """How long ago the object was created, `now` being an API timestamp."""
    return _seconds((obj.get("metadata") or {}).get("creationTimestamp"), now)


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
        "ErrImageNeverPull",
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


def termination_text(pod: Mapping[str, Any], container: str, term: Mapping[str, Any]) -> str:
    """What a stage container's end says: its termination message (what the stage wrote, or its
    log's tail); for a container the kernel killed at its memory limit, that first (its log
    ends mid-work and would blame the wrong thing)."""
    msg = str(term.get("message") or term.get("reason") or "").strip()
    if term.get("reason") != "OOMKilled":
        return msg
    containers = (pod.get("spec") or {}).get("containers") or []
    spec: Mapping[str, Any] = next((c for c in containers if c.get("name") == container), {})
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    return "OOMKilled: the container used more than its memory limit" + (
        f" of {limit} (spec.trainer.resources.memory)" if limit else ""
    )


def failure_of(
    pods: list[dict[str, Any]], job: Mapping[str, Any], *, trainjob: bool = False
) -> tuple[str, int | None]:
    """Why a failed stage Job failed: its newest failed container's termination message (what
    the stage wrote; its last line) and exit code, else the Job's (or the TrainJob's Failed
    condition's) message and no code."""
    best: tuple[str, str, int] | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            state, last = cs.get("state") or {}, cs.get("lastState") or {}
            term = state.get("terminated") or last.get("terminated")
            if term and term.get("exitCode", 0) != 0:
                msg = termination_text(pod, str(cs.get("name")), term)
                when = str(term.get("finishedAt") or "")
                if msg and (best is None or when >= best[0]):
                    best = (when, msg, int(term.get("exitCode") or 1))
    if best is not None:
        # Logs as the fallback message can be long: the last line is the error line.
        return best[1].splitlines()[-1][:1000], best[2]
    cond = true_condition(job, "Failed") or {}
    what = "the TrainJob failed" if trainjob else "the Job failed"
    return str(cond.get("message") or cond.get("reason") or what), None


#: A running stage Job's Pods are asked why it isn't running only after this long: a stage that
#: starts normally costs no extra request, and the scheduler and kubelet have had time to say.
POD_CHECK_AFTER_S = 15


def stage_pods_verdict(
    pods: list[dict[str, Any]], key: tuple[int, str]
) -> tuple[tuple[str, str] | None, str | None]:
    """What a running stage Job's Pods say: (a hold while no node can take it, with the
    scheduler's reason; why its container can't start, when no retry can fix that)."""
    stuck = next((p for p in map(pod_cannot_start, pods) if p), None)
    waiting = next((p for p in map(pod_unschedulable, pods) if p), None)
    what = f"stage {key[1]} of iteration {key[0]}"
    held = ("Unschedulable", f"{what} waits for a node: {waiting}") if waiting else None
    return held, stuck


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def _stuck(pod: Mapping[str, Any]) -> str | None:
    stuck = [
        f"{what} {w['reason']}" + (f": {w['message']}".splitlines()[0] if w.get("message") else "")
        for what, cs in _statuses(pod)
        if (w := (cs.get("state") or {}).get("waiting") or {}).get("reason") in _STUCK
    ]
    return stuck[0] if stuck else None


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a serving Pod isn't serving, as its kubelet or the scheduler reports it: the newest
    failed (init) container's termination message (its last line) or reason, else a waiting
    reason that needs a person (image pull, bad config), else the scheduler's word when no node
    can take it (too few GPUs); None when nothing is wrong (it may just be starting)."""
    failed = [
        (str(term.get("finishedAt") or ""), f"{what} failed: {_failure(term)}")
        for what, cs in _statuses(pod)
        for term in ((cs.get(s) or {}).get("terminated") or {} for s in ("state", "lastState"))
        if term and term.get("exitCode", 0) != 0
    ]
    found = max(failed)[1] if failed else _stuck(pod)
    return pod_unschedulable(pod) if found is None else f"pod {_name(pod)}: {found}"[:1000]


def pod_cannot_start(pod: Mapping[str, Any]) -> str | None:
    """Why a stage Pod's container can't start, when no retry of the Job can fix it (an image
    that isn't there, a Secret or ConfigMap that is missing); None otherwise. A container that
    ran and failed is the Job's to retry, so it is not one of these."""
    found = _stuck(pod)
    return None if found is None else f"pod {_name(pod)}: {found}"[:1000]


def pod_unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's word when no node can take the Pod (too little CPU, memory or GPUs, a
    taint, a selector), else None. A wait, not a failure: an autoscaler may add the node."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        scheduled = (c.get("type"), c.get("status"), c.get("reason"))
        if scheduled == ("PodScheduled", "False", "Unschedulable"):
            return f"pod {_name(pod)}: {c.get('message') or 'unschedulable'}"[:1000]
    return None


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
