"""One reconcile's decisions as a pure function: (spec, previous status, facts) -> Plan.

The executor observes (the store, the Jobs, the serving Deployments, whether the cluster serves
TrainJobs, what the store path holds) into `Facts`; `plan` decides everything from them: the one
action (the planner's, or a Wait / Finish that overrides it, each with its reason), the serving
changes with a reason each, the Events to post, and the status to write (phase, conditions,
metrics per iteration, result: `selfmoa.run.conditions.status`, the rule the local executor
uses too). The executor then only applies the plan. No I/O, no clock: every decision is a row
in a table test (tests/controller/test_plan.py, tests/controller/test_plan_status.py).

What only applying can tell (Kubeflow Trainer's webhook refusing a TrainJob) still ends the run
after the fact: `overruled` is the plan with that ending. A run that can't be planned at all has
its plan here too: `invalid` (its spec can't be used) and `blocked` (its reconcile raised); and
`settled` says when there is nothing left to decide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from selfmoa.api import exits
from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus, Phase
from selfmoa.controller import builders
from selfmoa.controller.failures import Blocked
from selfmoa.controller.serving_plan import hold_for_serving, serving_replicas
from selfmoa.run import stage_table
from selfmoa.run.identity import TakeOver
from selfmoa.run.planner import (
    CANNOT_START,
    Action,
    Finish,
    Observed,
    RunStage,
    Wait,
    next_action,
    status,
)

#: (Event type Normal|Warning, reason, message).
Event = tuple[str, str, str]

#: The Event a run posts when it takes over an earlier run's stages, or deletes them.
REUSE_EVENTS = {"reuse": "StagesReused", "fresh": "StartedFresh"}

#: Phases a run doesn't leave by itself.
TERMINAL = (Phase.succeeded, Phase.failed)

#: Failed-condition reasons whose cause lies outside the run (an outage: a stage exited 75; a
#: stage whose container can't start).
RETRYABLE_REASONS = frozenset({exits.reason_for(exits.Exit.UNAVAILABLE), CANNOT_START})

#: Stands in for a spec that failed validation: `status` and the executor need one only for the
#: gate over metrics and the status path, and an invalid run has neither metrics nor children.
PLACEHOLDER_SPEC = AlignmentRunSpec.model_validate({"policy": {"model": "invalid"}})


@dataclass(frozen=True)
class Served:
    """A served model's Deployment as observed."""

    spec_hash: str | None
    replicas: int
    ready: bool
    #: What its Pods' kubelet says went wrong, if anything (a crashing init container).
    problem: str | None = None


@dataclass(frozen=True)
class ServingChange:
    model: str
    kind: Literal["create", "roll", "scale"]
    replicas: int
    reason: str


@dataclass(frozen=True)
class Facts:
    """Everything one reconcile observed."""

    observed: Observed
    #: What the run does with its store path (`selfmoa.run.identity`).
    take_over: TakeOver = field(default_factory=lambda: TakeOver("resume"))
    #: Whether the cluster serves TrainJobs (None: not asked; only runs on several nodes ask).
    trainer_served: bool | None = None
    #: The operator's ClusterTrainingRuntime (named in the "install Trainer" message).
    training_runtime: str = ""
    #: Served model -> its Deployment (absent: none exists).
    serving: Mapping[str, Served] = field(default_factory=dict)
    #: Served model -> the spec hash of the Deployment the spec asks for.
    wanted_hash: Mapping[str, str | None] = field(default_factory=dict)
    #: When the reconcile observed (an API timestamp): a condition that changes says so.
    now: str = ""
    #: The run's metadata.generation (every condition's and the status's observedGeneration).
    generation: int | None = None
    #: Where the run's artifacts are (status.artifacts).
    artifacts: str | None = None
    #: Failed attempts per stage (`iter-NNN/stage`), as its Jobs say.
    attempts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    action: Action
    serving: tuple[ServingChange, ...] = ()
    events: tuple[Event, ...] = ()
    #: The status that goes with the action (the whole of it: a merge patch replaces its lists).
    status: AlignmentRunStatus = field(default_factory=AlignmentRunStatus)


def plan(spec: AlignmentRunSpec, previous: AlignmentRunStatus | None, facts: Facts) -> Plan:
    observed, taken = facts.observed, facts.take_over
    events: list[Event] = []
    if taken.decision in REUSE_EVENTS:
        events.append(("Normal", REUSE_EVENTS[taken.decision], taken.message))
    action = next_action(spec, observed)
    if taken.decision == "refuse" and not isinstance(action, Finish):
        if previous is None or previous.message != taken.message:
            events.append(("Warning", "SpecChangeRefused", taken.message))
        action = Wait("SpecChangeRefused", taken.message)
    missing = trainer_missing(spec, action, observed, facts.trainer_served, facts.training_runtime)
    if missing is not None:
        # Permanent: nothing the operator retries brings Kubeflow Trainer into the cluster (an
        # edit of the run, e.g. trainer.nodes: 1, makes it reconcile again).
        action = Finish(Phase.failed, "TrainerNotInstalled", missing)
    changes: list[ServingChange] = []
    replicas = serving_replicas(spec, action, observed)
    if replicas:
        idle = "the run is over" if isinstance(action, Finish) else "released during training"
        changes, ready, problems = serving_changes(
            replicas, facts.serving, facts.wanted_hash, idle=idle
        )
        action = hold_for_serving(spec, action, ready, problems)
    return Plan(
        action=action,
        serving=tuple(changes),
        events=tuple(events),
        status=status_of(spec, previous, facts, action),
    )


def status_of(
    spec: AlignmentRunSpec, previous: AlignmentRunStatus | None, facts: Facts, action: Action
) -> AlignmentRunStatus:
    """The status that goes with `action` over these facts."""
    new = status(
        spec,
        facts.observed,
        action,
        now=facts.now,
        previous=previous,
        artifacts=facts.artifacts,
        generation=facts.generation,
    )
    new.attempts = dict(facts.attempts)
    return new


def overruled(
    spec: AlignmentRunSpec,
    previous: AlignmentRunStatus | None,
    facts: Facts,
    planned: Plan,
    action: Finish,
) -> Plan:
    """`planned` once applying it told what planning couldn't (Kubeflow Trainer's webhook
    refused the TrainJob): the run ends with `action`, and its status says so."""
    return dataclasses.replace(
        planned, action=action, status=status_of(spec, previous, facts, action)
    )


def settled(previous: AlignmentRunStatus | None, generation: int | None) -> bool:
    """Nothing to decide: the run ended at this generation, and not because the environment
    failed it (such a run keeps being reconciled: once the user deletes the failed or stuck
    Job, the stage runs again and the run goes on)."""
    return (
        previous is not None
        and previous.phase in TERMINAL
        and previous.observed_generation == generation
        and not retryable(previous)
    )


def retryable(st: AlignmentRunStatus) -> bool:
    """The run failed because the environment did (`RETRYABLE_REASONS`)."""
    failed = next((c for c in st.conditions if c.type == "Failed"), None)
    return st.phase == Phase.failed and failed is not None and failed.reason in RETRYABLE_REASONS


def invalid(
    previous: AlignmentRunStatus | None, message: str, *, now: str, generation: int | None
) -> Plan:
    """A run whose spec can't be used: Failed, naming the field (`message`); the InvalidSpec
    Event once, not on every reconcile of the failed run."""
    observed = Observed(invalid=message)
    action = next_action(PLACEHOLDER_SPEC, observed)  # Finish(Failed, InvalidSpec, message)
    new = status(
        PLACEHOLDER_SPEC, observed, action, now=now, previous=previous, generation=generation
    )
    first = previous is None or previous.phase != Phase.failed
    events: tuple[Event, ...] = (("Warning", "InvalidSpec", message),) if first else ()
    return Plan(action=action, events=events, status=new)


def blocked(
    spec: AlignmentRunSpec,
    previous: AlignmentRunStatus | None,
    cause: Blocked,
    *,
    attempt: int,
    delay: float,
    now: str,
    generation: int | None,
) -> Plan:
    """A run whose reconcile raised (`cause`, classified): Failed when retrying can't help, else
    a wait naming the cause and the next retry. What was already observed (metrics per
    iteration, attempts) stays visible; one Event per cause, not one per retry."""
    action: Action
    if cause.permanent:
        action = Finish(Phase.failed, cause.reason, cause.message)
    else:
        action = Wait(
            cause.reason, f"{cause.message}; retrying in {delay:.0f}s (attempt {attempt})"
        )
    new = status(spec, Observed(), action, now=now, previous=previous, generation=generation)
    if previous is not None:
        new.iterations, new.attempts = previous.iterations, previous.attempts
        new.safety, new.helpfulness = previous.safety, previous.helpfulness
    again = previous is not None and (previous.message or "").startswith(cause.message)
    events: tuple[Event, ...] = () if again else (("Warning", cause.reason, cause.message),)
    return Plan(action=action, events=events, status=new)


def trainer_missing(
    spec: AlignmentRunSpec,
    action: Action,
    observed: Observed,
    served: bool | None,
    runtime: str,
) -> str | None:
    """Why the run can't go on (the cluster serves no TrainJobs but it needs them), or None.

    Asked before a stage starts: the run's first one (so that it fails before any work) and
    every training stage."""
    if spec.trainer.nodes <= 1 or served is not False or not isinstance(action, RunStage):
        return None
    first = not observed.done and observed.running is None
    stages = stage_table.stages_of_run(
        spec.iterations, reset=spec.safety_reset.enabled, export=spec.output is not None
    )
    ahead = any(builders.runs_as_trainjob(spec, s) for _, s in stages)
    if builders.runs_as_trainjob(spec, action.stage) or (first and ahead):
        return builders.not_installed_message(spec, runtime)
    return None


def serving_changes(
    replicas: Mapping[str, int],
    serving: Mapping[str, Served],
    wanted_hash: Mapping[str, str | None],
    *,
    idle: str = "released",
) -> tuple[list[ServingChange], set[str], dict[str, str]]:
    """What to create, roll or scale so each served model has its wanted replicas; the models
    whose server is ready as observed; for a wanted server that isn't, what went wrong. `idle`
    says why a server goes to zero replicas.

    A server being changed in this reconcile is not ready in it (its status is from before)."""
    changes: list[ServingChange] = []
    ready: set[str] = set()
    problems: dict[str, str] = {}
    for model, want in replicas.items():
        cur = serving.get(model)
        if cur is None:
            changes.append(ServingChange(model, "create", want, "no server yet"))
        elif cur.spec_hash != wanted_hash.get(model):
            changes.append(
                ServingChange(model, "roll", want, "the serving spec changed (image, args, ...)")
            )
        elif cur.replicas != want:
            why = idle if want == 0 else f"{cur.replicas} -> {want} replicas"
            changes.append(ServingChange(model, "scale", want, why))
        elif want > 0 and cur.ready:
            ready.add(model)
        elif want > 0 and cur.problem:
            problems[model] = cur.problem
    return changes, ready, problems
