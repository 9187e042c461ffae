"""The status the reconcile plan carries, as a table: `plan(spec, previous status, facts).status`
(phase, position, message, every condition with its reason and transition time, attempts,
observedGeneration); and the plans of a run that can't be planned normally (`invalid`,
`blocked`), of one applying overruled (`overruled`), and when there is nothing to plan
(`settled`). No cluster, no emulator."""

from __future__ import annotations

from typing import Any

import pytest
from test_plan import LOCAL, MODELS, _spec

from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus, Condition, Phase
from selfmoa.controller.failures import Blocked
from selfmoa.controller.plan import (
    Facts,
    Served,
    blocked,
    invalid,
    overruled,
    plan,
    settled,
)
from selfmoa.run.identity import TakeOver
from selfmoa.run.metrics import Metrics
from selfmoa.run.planner import Finish, Observed, Reuse, RunStage, StageFailure, status

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
GEN = 3
URI = "s3://bucket/runs/ml/r/"


SUSPENDED = _spec(suspend=True)
TARGET = _spec(stopWhen={"attackSuccessRateBelow": 0.6})
VLLM = _spec(serving={"engine": "vllm", "replicas": 1, "releaseDuringTraining": True})
MULTINODE = _spec(trainer={"nodes": 2, "gpus": 1})
BASE = {
    0: Metrics(iteration=0, safety=0.5, helpfulness=0.7, attack_success_rate=0.5, over_refusal=0.1)
}
REFUSED = "spec.policy: changed after the run started, ..."
FAILED = "stage evaluate of iteration 0 failed: boom"


def _facts(observed: Observed, now: str = T1, **over: Any) -> Facts:
    return Facts(observed, now=now, generation=GEN, artifacts=URI, **over)


def _cond(ctype: str, value: bool, reason: str, message: str = "", at: str = T1) -> Condition:
    return Condition(
        type=ctype,
        status="True" if value else "False",
        reason=reason,
        message=message,
        last_transition_time=at,
        observed_generation=GEN,
    )


def _conds(
    progressing: bool, succeeded: bool, failed: bool, reason: str, message: str, at: str = T1
) -> list[Condition]:
    """The three conditions of a run that had none before: the true one says why."""
    return [
        _cond("Progressing", progressing, reason, message if progressing else "", at),
        _cond("Succeeded", succeeded, reason, message if succeeded else "", at),
        _cond("Failed", failed, reason, message if failed else "", at),
    ]


STARTED = "running stage evaluate of iteration 0"
#: A run that started its first stage at T0.
RUNNING = AlignmentRunStatus(
    phase=Phase.running,
    iteration=0,
    stage="evaluate",
    message=STARTED,
    conditions=_conds(True, False, False, "StageStarted", STARTED, at=T0),
    attempts={"iter-000/evaluate": 1},
)
REUSED = Reuse(1, "AlignmentRun ml/r")
REUSED_TAKE_OVER = TakeOver("reuse", "reusing 1 finished stage(s) of ...", REUSED)
REUSED_OBSERVED = Observed(done=frozenset({(0, "evaluate")}), metrics=BASE, reused=REUSED)
REUSED_COND = _cond(
    "StagesReused", True, "EarlierRunResumed", "1 finished stage(s) reused from AlignmentRun ml/r"
)

#: (id, spec, previous, facts, phase, iteration, stage, message, conditions)
CASES: list[
    tuple[
        str,
        AlignmentRunSpec,
        AlignmentRunStatus | None,
        Facts,
        Phase,
        int | None,
        str | None,
        str,
        list[Condition],
    ]
] = [
    (
        "a new run starts: Progressing, stamped with the time and generation",
        LOCAL,
        None,
        _facts(Observed()),
        Phase.running,
        0,
        "evaluate",
        STARTED,
        _conds(True, False, False, "StageStarted", STARTED),
    ),
    (
        "the stage runs on: every condition keeps its transition time",
        LOCAL,
        RUNNING,
        _facts(Observed(running=(0, "evaluate"))),
        Phase.running,
        0,
        "evaluate",
        "stage evaluate of iteration 0 is running",
        [
            _cond(
                "Progressing", True, "StageRunning", "stage evaluate of iteration 0 is running", T0
            ),
            _cond("Succeeded", False, "StageStarted", "", T0),
            _cond("Failed", False, "StageStarted", "", T0),
        ],
    ),
    (
        "the stage failed: Failed and Progressing turn now, Succeeded keeps its time and reason",
        LOCAL,
        RUNNING,
        _facts(Observed(failure=StageFailure(0, "evaluate", "boom", 1))),
        Phase.failed,
        0,
        None,
        FAILED,
        [
            _cond("Progressing", False, "StageFailed", "", T1),
            _cond("Succeeded", False, "StageStarted", "", T0),
            _cond("Failed", True, "StageFailed", FAILED, T1),
        ],
    ),
    (
        "a fixed field edited: still Progressing, saying why it waits",
        LOCAL,
        None,
        _facts(Observed(), take_over=TakeOver("refuse", REFUSED)),
        Phase.running,
        None,
        None,
        REFUSED,
        _conds(True, False, False, "SpecChangeRefused", REFUSED),
    ),
    (
        "suspended before its first stage: Suspended, not Progressing",
        SUSPENDED,
        None,
        _facts(Observed()),
        Phase.suspended,
        None,
        None,
        "suspended before stage evaluate of iteration 0",
        _conds(False, False, False, "Suspended", ""),
    ),
    (
        "an earlier run's stages taken over: the StagesReused condition",
        LOCAL,
        None,
        _facts(REUSED_OBSERVED, take_over=REUSED_TAKE_OVER),
        Phase.running,
        1,
        "redteam",
        "running stage redteam of iteration 1",
        [
            *_conds(True, False, False, "StageStarted", "running stage redteam of iteration 1"),
            REUSED_COND,
        ],
    ),
    (
        "several nodes, no Kubeflow Trainer: Failed before any stage",
        MULTINODE,
        None,
        _facts(Observed(), trainer_served=False, training_runtime="torch-distributed"),
        Phase.failed,
        None,
        None,
        "",  # the message names the runtime: checked in test_the_failed_condition_says_why
        [],
    ),
    (
        "vLLM servers not ready: still Progressing, waiting for them",
        VLLM,
        None,
        _facts(
            Observed(),
            serving={m: Served(f"h-{m}", 1, ready=False) for m in MODELS},
            wanted_hash={m: f"h-{m}" for m in MODELS},
        ),
        Phase.running,
        None,
        None,
        "",  # names the servers: checked in test_plan.py
        [],
    ),
    (
        "the target reached at the start: Succeeded, with the result",
        TARGET,
        RUNNING,
        _facts(Observed(done=frozenset({(0, "evaluate")}), metrics=BASE)),
        Phase.succeeded,
        0,
        None,
        "attack success rate 0.500 below 0.6 at iteration 0",
        [
            _cond("Progressing", False, "TargetReached", "", T1),
            _cond(
                "Succeeded",
                True,
                "TargetReached",
                "attack success rate 0.500 below 0.6 at iteration 0",
                T1,
            ),
            _cond("Failed", False, "StageStarted", "", T0),
        ],
    ),
]


@pytest.mark.parametrize(
    ("spec", "previous", "facts", "phase", "iteration", "stage", "message", "conditions"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_status(
    spec: AlignmentRunSpec,
    previous: AlignmentRunStatus | None,
    facts: Facts,
    phase: Phase,
    iteration: int | None,
    stage: str | None,
    message: str,
    conditions: list[Condition],
) -> None:
    st = plan(spec, previous, facts).status
    assert (st.phase, st.iteration, st.stage) == (phase, iteration, stage)
    if message:
        assert st.message == message
    if conditions:
        assert st.conditions == conditions
    # The true condition is the phase's, and it carries the status's message.
    true = {c.type for c in st.conditions if c.status == "True"} - {"StagesReused"}
    want = {Phase.running: {"Progressing"}, Phase.suspended: set()}.get(phase, {phase.value})
    assert true == want
    assert all(c.message == st.message for c in st.conditions if c.type in true)
    assert all(c.observed_generation == GEN for c in st.conditions)
    assert (st.observed_generation, st.artifacts) == (GEN, URI)


@pytest.mark.parametrize(
    ("spec", "previous", "facts"), [c[1:4] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_plan_reports_with_the_executors_one_status_rule(
    spec: AlignmentRunSpec, previous: AlignmentRunStatus | None, facts: Facts
) -> None:
    """The operator's status is the local executor's `status` of the planned action, with the
    attempts its Jobs counted."""
    planned = plan(spec, previous, facts)
    same = status(
        spec,
        facts.observed,
        planned.action,
        now=facts.now,
        previous=previous,
        artifacts=facts.artifacts,
        generation=facts.generation,
    )
    same.attempts = dict(facts.attempts)
    assert planned.status == same


def test_the_failed_condition_says_why() -> None:
    st = plan(MULTINODE, None, CASES[6][3]).status
    (failed,) = [c for c in st.conditions if c.type == "Failed"]
    assert failed.reason == "TrainerNotInstalled"
    assert "Kubeflow Trainer" in failed.message and "'torch-distributed'" in failed.message


def test_attempts_are_the_jobs_count_not_the_previous_status() -> None:
    facts = _facts(Observed(running=(0, "evaluate")), attempts={"iter-000/evaluate": 2})
    assert plan(LOCAL, RUNNING, facts).status.attempts == {"iter-000/evaluate": 2}


def test_the_reuse_condition_keeps_its_time_and_metrics_show() -> None:
    first = plan(LOCAL, None, _facts(REUSED_OBSERVED, take_over=REUSED_TAKE_OVER)).status
    again = plan(LOCAL, first, _facts(REUSED_OBSERVED, now=T2)).status
    (cond,) = [c for c in again.conditions if c.type == "StagesReused"]
    assert cond == REUSED_COND  # still T1
    assert [(i.index, i.safety, i.accepted) for i in again.iterations] == [(0, 0.5, True)]
    assert (again.safety, again.helpfulness) == (0.5, 0.7)
    assert again.result is not None and again.result.iteration == 0


def test_overruled_ends_the_run_and_its_status_says_so() -> None:
    facts = _facts(Observed(done=frozenset({(0, "evaluate")}), metrics=BASE))
    planned = plan(LOCAL, RUNNING, facts)
    assert isinstance(planned.action, RunStage)
    ended = Finish(Phase.failed, "TrainJobRejected", "Kubeflow Trainer refused the TrainJob: x")
    got = overruled(LOCAL, RUNNING, facts, planned, ended)
    assert (got.action, got.serving, got.events) == (ended, planned.serving, planned.events)
    assert (got.status.phase, got.status.message) == (Phase.failed, ended.message)
    (failed,) = [c for c in got.status.conditions if c.type == "Failed"]
    assert (failed.status, failed.reason, failed.last_transition_time) == (
        "True",
        "TrainJobRejected",
        T1,
    )


def test_an_invalid_spec_fails_naming_the_field_with_one_event() -> None:
    message = "spec.iterations: must be at least 1"
    first = invalid(None, message, now=T1, generation=GEN)
    assert first.action == Finish(Phase.failed, "InvalidSpec", message)
    assert first.events == (("Warning", "InvalidSpec", message),)
    st = first.status
    assert (st.phase, st.message, st.observed_generation, st.artifacts) == (
        Phase.failed,
        message,
        GEN,
        None,
    )
    assert st.conditions == _conds(False, False, True, "InvalidSpec", message)
    again = invalid(st, message, now=T2, generation=GEN)
    assert again.events == ()
    assert again.status.conditions == st.conditions  # times kept


def test_a_blocked_reconcile_waits_keeping_what_was_observed() -> None:
    before = plan(LOCAL, None, _facts(REUSED_OBSERVED, attempts={"iter-000/evaluate": 1})).status
    cause = Blocked("StorageUnavailable", "storage: the store stopped answering", permanent=False)
    got = blocked(LOCAL, before, cause, attempt=2, delay=4.0, now=T2, generation=GEN)
    waiting = "storage: the store stopped answering; retrying in 4s (attempt 2)"
    assert (got.status.phase, got.status.message) == (Phase.running, waiting)
    assert got.events == (("Warning", "StorageUnavailable", cause.message),)
    (progressing,) = [c for c in got.status.conditions if c.type == "Progressing"]
    assert (progressing.reason, progressing.last_transition_time) == ("StorageUnavailable", T1)
    assert got.status.iterations == before.iterations
    assert got.status.attempts == {"iter-000/evaluate": 1}
    assert (got.status.safety, got.status.helpfulness) == (0.5, 0.7)
    # The same cause on the next retry: no second Event.
    assert (
        blocked(LOCAL, got.status, cause, attempt=3, delay=8.0, now=T2, generation=GEN).events == ()
    )


def test_a_permanent_block_fails_the_run() -> None:
    cause = Blocked("ChildRejected", "the API server rejected a child object: x", permanent=True)
    got = blocked(LOCAL, None, cause, attempt=1, delay=1.0, now=T1, generation=GEN)
    assert got.action == Finish(Phase.failed, "ChildRejected", cause.message)
    assert got.status.conditions == _conds(False, False, True, "ChildRejected", cause.message)


def _ended(reason: str, phase: Phase = Phase.failed) -> AlignmentRunStatus:
    return AlignmentRunStatus(
        phase=phase,
        observed_generation=GEN,
        conditions=[_cond("Failed", phase == Phase.failed, reason)],
    )


@pytest.mark.parametrize(
    ("previous", "generation", "want"),
    [
        (None, GEN, False),
        (RUNNING, GEN, False),
        (_ended("StageFailed"), GEN, True),
        (_ended("Completed", Phase.succeeded), GEN, True),
        (_ended("StageFailed"), GEN + 1, False),  # edited since: decide again
        (_ended("EnvironmentUnavailable"), GEN, False),  # an outage: goes on once retried
        (_ended("StageCannotStart"), GEN, False),
    ],
    ids=[
        "new",
        "running",
        "failed",
        "succeeded",
        "edited after it ended",
        "failed by an outage",
        "a stage that can't start",
    ],
)
def test_settled(previous: AlignmentRunStatus | None, generation: int, want: bool) -> None:
    assert settled(previous, generation) is want
