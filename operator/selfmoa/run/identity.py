"""Whose run a store path holds, and what a starting run does about it: a pure decision.

A run's artifacts live at `<storage>/<namespace>/<name>/`, so a new AlignmentRun with the name
of a deleted one (or `selfmoa run` on a store that already holds a run) finds the earlier run's
finished stages there. Resuming is right for the same run (an operator restart, the same command
again); for a new object it must be visible and avoidable:

- run.json records who started the run (`metadata.uid`; none for a local run) and when;
- a new owner that finds finished stages under the same spec takes them over, and says so (an
  Event, the `StagesReused` condition, a line on the console), counted and named;
- under a different spec it can't reuse them and waits, saying how to go on;
- asked to start fresh (`selfmoa.dev/fresh-start: "true"` on the object, `selfmoa run --fresh`),
  it deletes what the earlier run left first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from selfmoa.run.planner import Reuse

#: Annotation of an AlignmentRun: "true" deletes an earlier run's artifacts at its store path
#: before the first stage (a run never deletes its own: the owner's uid decides which is which).
FRESH_START_ANNOTATION: Final = "selfmoa.dev/fresh-start"

Decision = Literal["start", "resume", "reuse", "fresh", "refuse"]


@dataclass(frozen=True)
class TakeOver:
    """What a starting (or restarted) run does with what it found at its store path."""

    decision: Decision
    #: For the user: why it refuses, or what it reused or deleted (empty for start and resume).
    message: str = ""
    #: The stages this run took over from an earlier one, now or when it first started.
    reuse: Reuse | None = None


def wants_fresh_start(annotations: Mapping[str, Any] | None) -> bool:
    value = (annotations or {}).get(FRESH_START_ANNOTATION, "")
    return str(value).strip().lower() in ("true", "yes", "1")


def describe_owner(saved: Mapping[str, Any]) -> str:
    """The run that wrote `saved` (a run.json), in words: `ns/name (uid U, started T)`."""
    meta = saved.get("metadata") or {}
    started = saved.get("started") or "at an unknown time"
    who = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    uid = meta.get("uid")
    if uid:
        return f"AlignmentRun {who} (uid {uid}, started {started})"
    return f"a local run of {who} (started {started})"


def saved_reuse(saved: Mapping[str, Any]) -> Reuse | None:
    raw = saved.get("reused")
    if not isinstance(raw, Mapping):
        return None
    return Reuse(stages=int(raw.get("stages", 0)), source=str(raw.get("source", "")))


def take_over(
    saved: Mapping[str, Any] | None,
    *,
    uid: str | None,
    finished: int,
    changed: list[str],
    fresh: bool,
) -> TakeOver:
    """The decision for a run owned by `uid` (None: a local run) that found `saved` (the store's
    run.json, None when absent) with `finished` finished stages, whose fixed spec fields differ
    from it in `changed`, asked to start `fresh` or not."""
    if saved is None:
        return TakeOver("start")
    saved_uid = (saved.get("metadata") or {}).get("uid")
    owner = describe_owner(saved)
    same_owner = saved_uid == uid and (uid is not None or not fresh)
    if same_owner:
        if changed and uid is None:
            return TakeOver(
                "refuse",
                f"spec.{changed[0]}: differs from the run already at this store path; revert "
                "it, use another metadata.name or --store, or --fresh to delete that run first",
            )
        if changed:
            return TakeOver(
                "refuse",
                f"spec.{changed[0]}: changed after the run started, which would mix two runs' "
                "artifacts; revert it, or create a new AlignmentRun for the new spec",
            )
        return TakeOver("resume", reuse=saved_reuse(saved))
    if fresh:
        return TakeOver("fresh", f"deleting what {owner} left at this store path")
    if finished == 0:
        return TakeOver("start")
    if changed:
        return TakeOver(
            "refuse",
            f"the store path holds {finished} finished stage(s) of {owner} with a different "
            f'spec.{changed[0]}; set the annotation {FRESH_START_ANNOTATION}: "true" (selfmoa '
            "run --fresh) to delete them and start again, or use another name",
        )
    reuse = Reuse(stages=finished, source=owner)
    return TakeOver(
        "reuse",
        f"reusing {finished} finished stage(s) of {owner} found at this store path (set "
        f'{FRESH_START_ANNOTATION}: "true" or run with --fresh to start again instead)',
        reuse,
    )
