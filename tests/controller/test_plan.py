"""The reconcile's decisions as a table: `plan(spec, previous status, facts)`, no cluster, no
emulator. Each row is one situation an operator meets and what it must decide."""

from __future__ import annotations

from typing import Any

import pytest

from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec, AlignmentRunStatus, Phase
from selfmoa.controller.plan import Facts, Plan, Served, ServingChange, plan
from selfmoa.run.identity import TakeOver
from selfmoa.run.metrics import Metrics
from selfmoa.run.planner import Finish, Observed, Reuse, RunStage, StageFailure, Wait

MODELS = ("org/policy", "org/judge")


def _spec(**over: Any) -> AlignmentRunSpec:
    spec: dict[str, Any] = {
        "policy": {"model": MODELS[0]},
        "judges": [
            {"name": "guard", "objective": "safety", "kind": "llm", "model": MODELS[1]},
            {"name": "helper", "objective": "helpfulness", "kind": "llm", "model": MODELS[1]},
        ],
        "iterations": 2,
        **over,
    }
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


LOCAL = _spec()
VLLM = _spec(serving={"engine": "vllm", "replicas": 1, "releaseDuringTraining": True})
MULTINODE = _spec(trainer={"nodes": 2, "gpus": 1})
#: Iteration 0 evaluated; iteration 1's red team, respond, judge and pairs done: train is next.
UP_TO_TRAIN = frozenset(
    {(0, "evaluate"), (1, "redteam"), (1, "respond"), (1, "judge"), (1, "pairs")}
)
HASH = {m: f"h-{m}" for m in MODELS}
BASE = {
    0: Metrics(iteration=0, safety=0.5, helpfulness=0.7, attack_success_rate=0.5, over_refusal=0.1)
}


def _ready(replicas: int = 1) -> dict[str, Served]:
    return {m: Served(HASH[m], replicas, ready=replicas > 0) for m in MODELS}


def _refused() -> TakeOver:
    return TakeOver("refuse", "spec.policy: changed after the run started, ...")


CASES: list[tuple[str, AlignmentRunSpec, Facts, AlignmentRunStatus | None, Plan]] = [
    (
        "a new run starts its first stage",
        LOCAL,
        Facts(Observed()),
        None,
        Plan(RunStage(0, "evaluate", 0)),
    ),
    (
        "a fixed field edited: wait, saying why, once",
        LOCAL,
        Facts(Observed(), take_over=_refused()),
        None,
        Plan(
            Wait("SpecChangeRefused", _refused().message),
            events=(("Warning", "SpecChangeRefused", _refused().message),),
        ),
    ),
    (
        "the same refusal again: no second Event",
        LOCAL,
        Facts(Observed(), take_over=_refused()),
        AlignmentRunStatus(message=_refused().message),
        Plan(Wait("SpecChangeRefused", _refused().message)),
    ),
    (
        "a refused run whose stage failed still ends: the failure wins",
        LOCAL,
        Facts(Observed(failure=StageFailure(0, "evaluate", "boom", 1)), take_over=_refused()),
        None,
        Plan(Finish(Phase.failed, "StageFailed", "")),
    ),
    (
        "an earlier run's stages taken over: an Event, and the run goes on",
        LOCAL,
        Facts(
            Observed(
                done=frozenset({(0, "evaluate")}),
                metrics=BASE,
                reused=Reuse(1, "AlignmentRun ml/r"),
            ),
            take_over=TakeOver("reuse", "reusing 1 finished stage(s) of ...", Reuse(1, "x")),
        ),
        None,
        Plan(
            RunStage(1, "redteam", 0),
            events=(("Normal", "StagesReused", "reusing 1 finished stage(s) of ..."),),
        ),
    ),
    (
        "several nodes, no Kubeflow Trainer: fails before the first stage",
        MULTINODE,
        Facts(Observed(), trainer_served=False, training_runtime="torch-distributed"),
        None,
        Plan(Finish(Phase.failed, "TrainerNotInstalled", "")),  # message checked below
    ),
    (
        "several nodes, Trainer served: starts",
        MULTINODE,
        Facts(Observed(), trainer_served=True),
        None,
        Plan(RunStage(0, "evaluate", 0)),
    ),
    (
        "vLLM, no servers yet: create them, hold the stage",
        VLLM,
        Facts(Observed(), wanted_hash=HASH),
        None,
        Plan(
            Wait("ServingNotReady", ""),
            serving=tuple(ServingChange(m, "create", 1, "no server yet") for m in MODELS),
        ),
    ),
    (
        "vLLM, servers ready: the stage starts, nothing changes",
        VLLM,
        Facts(Observed(), serving=_ready(), wanted_hash=HASH),
        None,
        Plan(RunStage(0, "evaluate", 0)),
    ),
    (
        "vLLM, a server's Pod crashes: wait, naming what its kubelet says",
        VLLM,
        Facts(
            Observed(),
            serving={
                MODELS[0]: Served(HASH[MODELS[0]], 1, ready=True),
                MODELS[1]: Served(HASH[MODELS[1]], 1, ready=False, problem="pod j: init failed"),
            },
            wanted_hash=HASH,
        ),
        None,
        Plan(Wait("ServingNotReady", "")),
    ),
    (
        "vLLM, the serving spec changed: roll both, hold the stage",
        VLLM,
        Facts(Observed(), serving=_ready(), wanted_hash={m: "new" for m in MODELS}),
        None,
        Plan(
            Wait("ServingNotReady", ""),
            serving=tuple(
                ServingChange(m, "roll", 1, "the serving spec changed (image, args, ...)")
                for m in MODELS
            ),
        ),
    ),
    (
        "vLLM, training next: the servers are released to free the GPUs",
        VLLM,
        Facts(Observed(done=UP_TO_TRAIN, metrics=BASE), serving=_ready(), wanted_hash=HASH),
        None,
        Plan(
            RunStage(1, "train", 0),
            serving=tuple(ServingChange(m, "scale", 0, "released during training") for m in MODELS),
        ),
    ),
    (
        "vLLM, the run failed: scale the servers to zero",
        VLLM,
        Facts(
            Observed(failure=StageFailure(0, "evaluate", "boom", 1)),
            serving=_ready(),
            wanted_hash=HASH,
        ),
        None,
        Plan(
            Finish(Phase.failed, "StageFailed", "stage evaluate of iteration 0 failed: boom"),
            serving=tuple(ServingChange(m, "scale", 0, "the run is over") for m in MODELS),
        ),
    ),
]


@pytest.mark.parametrize(
    ("spec", "facts", "previous", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(
    spec: AlignmentRunSpec, facts: Facts, previous: AlignmentRunStatus | None, want: Plan
) -> None:
    got = plan(spec, previous, facts)
    assert got.serving == want.serving
    assert got.events == want.events
    assert type(got.action) is type(want.action)
    if isinstance(want.action, RunStage):
        assert got.action == want.action
    elif isinstance(want.action, Wait):
        assert isinstance(got.action, Wait) and got.action.reason == want.action.reason
        if want.action.message:
            assert got.action.message == want.action.message
    else:
        assert isinstance(got.action, Finish) and isinstance(want.action, Finish)
        assert got.action.phase == want.action.phase
        if want.action.reason:
            assert got.action.reason == want.action.reason


def test_the_waits_and_ends_say_why() -> None:
    crash = plan(VLLM, None, CASES[9][2])
    assert isinstance(crash.action, Wait)
    assert crash.action.message == (
        "waiting for vLLM server(s) of org/judge before stage evaluate of iteration 0; "
        "pod j: init failed"
    )
    trainer = plan(MULTINODE, None, CASES[5][2])
    assert isinstance(trainer.action, Finish)
    assert "Kubeflow Trainer" in trainer.action.message
    assert "'torch-distributed'" in trainer.action.message
    failed = plan(LOCAL, None, CASES[3][2])
    assert isinstance(failed.action, Finish) and failed.action.reason == "StageFailed"
