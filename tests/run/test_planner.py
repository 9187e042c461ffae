"""The planner's transitions, table-driven, without any cluster or model."""

from __future__ import annotations

from typing import Any

import pytest

from selfmoa.api import Phase, parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.run import stage_table
from selfmoa.run.metrics import Metrics, Outcomes
from selfmoa.run.planner import (
    Finish,
    Observed,
    RunStage,
    StageFailure,
    Wait,
    gate,
    next_action,
    parent_of,
    result_of,
    status,
)


def make_spec(**spec: Any) -> AlignmentRunSpec:
    return parse_run({"spec": {"policy": {"model": "selfmoa/tiny"}, **spec}}).spec


def m(k: int, asr: float, helpfulness: float = 0.8) -> Metrics:
    return Metrics(
        iteration=k,
        safety=1 - asr,
        helpfulness=helpfulness,
        attack_success_rate=asr,
        over_refusal=0.1,
    )


def done_through(
    spec: AlignmentRunSpec, last: int, extra: tuple[tuple[int, str], ...] = ()
) -> frozenset[tuple[int, str]]:
    out = {
        (k, s)
        for k in range(last + 1)
        for s in stage_table.stages_of(k, reset=spec.safety_reset.enabled)
    }
    return frozenset(out | set(extra))


def test_fresh_run_starts_with_the_baseline_evaluation() -> None:
    assert next_action(make_spec(), Observed()) == RunStage(0, "evaluate", 0)


def test_reset_comes_before_the_baseline() -> None:
    spec = make_spec(safetyReset={"enabled": True})
    assert next_action(spec, Observed()) == RunStage(0, "reset", 0)
    assert next_action(spec, Observed(done=frozenset({(0, "reset")}))) == RunStage(0, "evaluate", 0)


@pytest.mark.parametrize("stage_index", range(len(stage_table.LOOP)))
def test_iteration_stages_run_in_order(stage_index: int) -> None:
    spec = make_spec()
    done = done_through(spec, 0, tuple((1, s) for s in stage_table.LOOP[:stage_index]))
    action = next_action(spec, Observed(done=done, metrics={0: m(0, 0.8)}))
    assert action == RunStage(1, stage_table.LOOP[stage_index], 0)


def test_runs_all_iterations_then_succeeds() -> None:
    spec = make_spec(iterations=3)
    metrics = {0: m(0, 0.8), 1: m(1, 0.6), 2: m(2, 0.4)}
    action = next_action(spec, Observed(done=done_through(spec, 2), metrics=metrics))
    assert action == RunStage(3, "redteam", 2)
    metrics[3] = m(3, 0.2)
    action = next_action(spec, Observed(done=done_through(spec, 3), metrics=metrics))
    assert (
        isinstance(action, Finish)
        and action.phase == Phase.succeeded
        and action.reason == "Completed"
    )


def test_stops_when_target_reached() -> None:
    spec = make_spec(iterations=5, stopWhen={"attackSuccessRateBelow": 0.3})
    metrics = {0: m(0, 0.8), 1: m(1, 0.25)}
    action = next_action(spec, Observed(done=done_through(spec, 1), metrics=metrics))
    assert isinstance(action, Finish) and action.reason == "TargetReached"


def test_target_not_reached_by_a_rolled_back_iteration() -> None:
    # Below target but helpfulness collapsed: rolled back, so the loop goes on.
    spec = make_spec(iterations=5, stopWhen={"attackSuccessRateBelow": 0.3})
    metrics = {0: m(0, 0.8, 0.8), 1: m(1, 0.1, 0.4)}
    action = next_action(spec, Observed(done=done_through(spec, 1), metrics=metrics))
    assert action == RunStage(2, "redteam", 0)


def test_rollback_when_attack_success_rises() -> None:
    spec = make_spec(iterations=4)
    metrics = {0: m(0, 0.8), 1: m(1, 0.5), 2: m(2, 0.7)}
    g = gate(spec, metrics)
    assert g.accepted == {1: True, 2: False}
    assert g.parent[3] == 1  # iteration 3 starts again from iteration 1's adapter
    assert next_action(spec, Observed(done=done_through(spec, 2), metrics=metrics)) == RunStage(
        3, "redteam", 1
    )
    assert parent_of(spec, metrics, 3) == 1
    assert parent_of(spec, metrics, 2) == 1


def test_rollback_when_helpfulness_drops_too_much() -> None:
    spec = make_spec(iterations=4, stopWhen={"maxHelpfulnessDrop": 0.05})
    metrics = {0: m(0, 0.8, 0.80), 1: m(1, 0.5, 0.70)}
    assert gate(spec, metrics).accepted == {1: False}
    ok = {0: m(0, 0.8, 0.80), 1: m(1, 0.5, 0.77)}
    assert gate(spec, ok).accepted == {1: True}


def with_validation(metric: Metrics, asr: float, helpfulness: float = 0.8) -> Metrics:
    held_out = metric.model_dump()
    held_out["validation"] = m(metric.iteration, asr, helpfulness).model_dump()
    return Metrics.model_validate(held_out)


def test_the_gate_decides_on_the_validation_split_not_the_reported_one() -> None:
    spec = make_spec(iterations=3)
    # Held-out says iteration 1 got worse and 2 better; validation says the opposite.
    metrics = {
        0: with_validation(m(0, 0.8), 0.8),
        1: with_validation(m(1, 0.9), 0.4),
        2: with_validation(m(2, 0.1), 0.6),
    }
    g = gate(spec, metrics)
    assert g.accepted == {1: True, 2: False}
    assert g.best == 1 and g.parent[3] == 1
    # Without validation figures the same held-out numbers decide.
    plain = {
        k: Metrics.model_validate({**v.model_dump(), "validation": None})
        for k, v in metrics.items()
    }
    assert gate(spec, plain).accepted == {1: False, 2: True}
    # The result's reason quotes the figures decided on; its numbers are the held-out ones.
    r = result_of(g, metrics)
    assert r is not None and r.attack_success_rate == pytest.approx(0.9)
    assert "lowest validation attack success rate (0.400)" in r.why
    plain_r = result_of(gate(spec, plain), plain)
    assert plain_r is not None and "lowest held-out attack success rate (0.100)" in plain_r.why


def test_small_helpfulness_drops_do_not_compound_below_the_start() -> None:
    spec = make_spec(iterations=4, stopWhen={"maxHelpfulnessDrop": 0.05})
    # Each step loses 4% against its parent, but the second is 7.8% below the start.
    metrics = {0: m(0, 0.8, 0.80), 1: m(1, 0.6, 0.768), 2: m(2, 0.4, 0.7373)}
    assert gate(spec, metrics).accepted == {1: True, 2: False}
    # Above the start, the parent is the reference.
    up = {0: m(0, 0.8, 0.80), 1: m(1, 0.6, 0.90), 2: m(2, 0.4, 0.84)}
    assert gate(spec, up).accepted == {1: True, 2: False}


def test_validation_helpfulness_drop_rolls_back() -> None:
    spec = make_spec(iterations=3, stopWhen={"maxHelpfulnessDrop": 0.05})
    metrics = {0: with_validation(m(0, 0.8), 0.8, 0.8), 1: with_validation(m(1, 0.5), 0.3, 0.6)}
    assert gate(spec, metrics).accepted == {1: False}


def with_perplexity(metric: Metrics, held_out: float, validation: float | None = None) -> Metrics:
    def cap(ppl: float) -> dict[str, Any]:
        return {"source": "t", "perplexity": ppl, "next_token_accuracy": 0.5, "tokens": 10}

    raw = metric.model_dump()
    raw["capability"] = cap(held_out)
    if validation is not None:
        raw["validation"] = {**raw["validation"], "capability": cap(validation)}
    return Metrics.model_validate(raw)


def test_capability_drop_rolls_back_against_the_start_not_the_parent() -> None:
    spec = make_spec(iterations=4, stopWhen={"maxCapabilityDrop": 0.2})
    metrics = {
        0: with_perplexity(m(0, 0.8), 10.0),
        1: with_perplexity(m(1, 0.6), 11.5),  # +15%: kept
        2: with_perplexity(m(2, 0.4), 12.5),  # +25% over the start, +9% over its parent
        3: with_perplexity(m(3, 0.3), 11.9),
    }
    g = gate(spec, metrics)
    assert g.accepted == {1: True, 2: False, 3: True} and g.best == 3
    assert g.parent[3] == 1
    # Unset, capability is no criterion.
    assert gate(make_spec(iterations=4), metrics).accepted == {1: True, 2: True, 3: True}


def with_task_score(metric: Metrics, score: float) -> Metrics:
    raw = metric.model_dump()
    task = {"task": "hellaswag", "metric": "acc_norm", "value": score, "samples": 200}
    raw["capability"] = {"source": "lm-eval", "tasks": [task]}
    return Metrics.model_validate(raw)


def test_capability_drop_on_lm_eval_task_scores() -> None:
    spec = make_spec(iterations=3, stopWhen={"maxCapabilityDrop": 0.05})
    metrics = {
        0: with_task_score(m(0, 0.8), 0.60),
        1: with_task_score(m(1, 0.6), 0.58),  # -3.3%: kept
        2: with_task_score(m(2, 0.4), 0.56),  # -6.7% below the start: rolled back
    }
    assert gate(spec, metrics).accepted == {1: True, 2: False}


def test_capability_drop_is_decided_on_validation() -> None:
    spec = make_spec(iterations=3, stopWhen={"maxCapabilityDrop": 0.1})
    # Held-out perplexity rose 50% (reported only); validation's rose 5%: accepted.
    metrics = {
        0: with_perplexity(with_validation(m(0, 0.8), 0.8), 10.0, 10.0),
        1: with_perplexity(with_validation(m(1, 0.5), 0.5), 15.0, 10.5),
    }
    assert gate(spec, metrics).accepted == {1: True}
    worse = {**metrics, 1: with_perplexity(with_validation(m(1, 0.5), 0.5), 10.0, 11.5)}
    assert gate(spec, worse).accepted == {1: False}


def test_a_partly_validated_history_is_gated_on_held_out_throughout() -> None:
    # Metrics from before the validation split existed: no comparison mixes the two sets.
    spec = make_spec(iterations=3)
    metrics = {0: m(0, 0.8), 1: with_validation(m(1, 0.5), 0.9)}
    assert gate(spec, metrics).accepted == {1: True}


def test_target_reached_on_validation() -> None:
    spec = make_spec(iterations=4, stopWhen={"attackSuccessRateBelow": 0.2})
    metrics = {0: with_validation(m(0, 0.8), 0.8), 1: with_validation(m(1, 0.5), 0.1)}
    assert gate(spec, metrics).stop is not None
    assert gate(spec, metrics).stop[0] == "TargetReached"  # type: ignore[index]


def test_no_progress_patience() -> None:
    spec = make_spec(iterations=6, stopWhen={"patience": 2})
    metrics = {0: m(0, 0.5), 1: m(1, 0.5), 2: m(2, 0.5)}
    action = next_action(spec, Observed(done=done_through(spec, 2), metrics=metrics))
    assert isinstance(action, Finish) and action.reason == "NoProgress"
    # One improvement resets the count.
    metrics = {0: m(0, 0.5), 1: m(1, 0.5), 2: m(2, 0.4)}
    assert next_action(spec, Observed(done=done_through(spec, 2), metrics=metrics)) == RunStage(
        3, "redteam", 2
    )


def test_min_improvement() -> None:
    spec = make_spec(iterations=6, stopWhen={"patience": 1, "minImprovement": 0.05})
    metrics = {0: m(0, 0.5), 1: m(1, 0.48)}
    action = next_action(spec, Observed(done=done_through(spec, 1), metrics=metrics))
    assert isinstance(action, Finish) and action.reason == "NoProgress"


def test_stage_failure_fails_the_run_naming_the_stage() -> None:
    spec = make_spec()
    failure = StageFailure(1, "train", "CUDA out of memory")
    action = next_action(
        spec, Observed(done=done_through(spec, 0), metrics={0: m(0, 0.8)}, failure=failure)
    )
    assert isinstance(action, Finish) and action.phase == Phase.failed
    assert "train" in action.message and "CUDA out of memory" in action.message


def test_invalid_spec_fails() -> None:
    action = next_action(make_spec(), Observed(invalid="spec.judges[0].model: not served"))
    assert isinstance(action, Finish) and action.reason == "InvalidSpec"


def test_running_stage_means_wait() -> None:
    action = next_action(make_spec(), Observed(running=(0, "evaluate")))
    assert isinstance(action, Wait) and action.reason == "StageRunning"


def test_suspend_waits_between_stages() -> None:
    spec = make_spec(suspend=True)
    action = next_action(spec, Observed(done=done_through(spec, 0), metrics={0: m(0, 0.8)}))
    assert isinstance(action, Wait) and action.reason == "Suspended"


def test_planner_is_pure_and_repeatable() -> None:
    spec = make_spec()
    obs = Observed(done=done_through(spec, 1), metrics={0: m(0, 0.8), 1: m(1, 0.6)})
    assert next_action(spec, obs) == next_action(spec, obs)


def test_status_conditions_and_metrics() -> None:
    spec = make_spec(iterations=2)
    obs = Observed(done=done_through(spec, 1), metrics={0: m(0, 0.8), 1: m(1, 0.9)})
    action = next_action(spec, obs)
    st = status(spec, obs, action, now="2026-01-01T00:00:00Z")
    assert st.phase == Phase.running and st.iteration == 2 and st.stage == "redteam"
    assert [i.accepted for i in st.iterations] == [True, False]
    cond = {c.type: c for c in st.conditions}
    assert cond["Progressing"].status == "True" and cond["Succeeded"].status == "False"
    # The best accepted iteration is what the printer columns show.
    assert st.safety == pytest.approx(0.2)
    # A later call keeps the transition time of an unchanged condition.
    later = status(spec, obs, action, now="2026-01-02T00:00:00Z", previous=st)
    assert {c.type: c.last_transition_time for c in later.conditions}[
        "Progressing"
    ] == "2026-01-01T00:00:00Z"


def test_status_when_finished() -> None:
    spec = make_spec(iterations=1)
    obs = Observed(done=done_through(spec, 1), metrics={0: m(0, 0.8), 1: m(1, 0.4)})
    action = next_action(spec, obs)
    st = status(spec, obs, action, now="t")
    cond = {c.type: c.status for c in st.conditions}
    assert st.phase == Phase.succeeded and cond == {
        "Progressing": "False",
        "Succeeded": "True",
        "Failed": "False",
    }


def test_result_is_the_best_accepted_iteration_and_says_why() -> None:
    spec = make_spec(iterations=3, stopWhen={"patience": 5})
    metrics = {0: m(0, 0.8), 1: m(1, 0.5), 2: m(2, 0.6), 3: m(3, 0.45, helpfulness=0.1)}
    obs = Observed(done=done_through(spec, 3), metrics=metrics)
    st = status(spec, obs, next_action(spec, obs), now="t", generation=7)
    # 2 is rolled back (ASR rose), 3 is rolled back (helpfulness collapsed): 1 is the result.
    assert st.result is not None and st.result.iteration == 1
    assert st.result.attack_success_rate == pytest.approx(0.5)
    assert "lowest held-out attack success rate" in st.result.why
    assert all(c.observed_generation == 7 for c in st.conditions)
    base_only = Observed(done=done_through(spec, 1), metrics={0: m(0, 0.8), 1: m(1, 0.9)})
    st0 = status(spec, base_only, next_action(spec, base_only), now="t")
    assert st0.result is not None and st0.result.iteration == 0
    assert "no trained iteration" in st0.result.why


def test_with_an_output_the_result_is_exported_before_the_run_succeeds(
    tmp_path: Any,
) -> None:
    spec = make_spec(iterations=2, output={"uri": f"file://{tmp_path}/out"})
    metrics = {0: m(0, 0.8), 1: m(1, 0.5), 2: m(2, 0.6)}
    done = done_through(spec, 2)
    action = next_action(spec, Observed(done=done, metrics=metrics))
    assert action == RunStage(1, "export", 1)  # 2 was rolled back: 1 is the result
    running = Observed(done=done, metrics=metrics, running=(1, "export"))
    assert isinstance(next_action(spec, running), Wait)
    exported = Observed(
        done=done | {(1, "export")}, metrics=metrics, exported=f"file://{tmp_path}/out"
    )
    action = next_action(spec, exported)
    assert isinstance(action, Finish) and action.phase == Phase.succeeded
    st = status(spec, exported, action, now="t")
    assert st.result is not None and st.result.exported == f"file://{tmp_path}/out"
    # Without an output nothing is exported.
    plain = make_spec(iterations=2)
    assert isinstance(next_action(plain, Observed(done=done, metrics=metrics)), Finish)
    assert (1, "export") in set(stage_table.stages_of_run(2, reset=False, export=True)) and (
        1,
        "export",
    ) not in set(stage_table.stages_of_run(2, reset=False))


def test_status_carries_each_iterations_outcome_classes() -> None:
    spec = make_spec(iterations=1)
    classed = Metrics.model_validate(
        {
            **m(1, 0.25).model_dump(),
            "outcomes": Outcomes(
                source="gold",
                by_kind={"harmful": {"refusal": 0.5, "deflection": 0.123456, "unsafe": 0.25}},
                counts={"harmful": 8},
            ).model_dump(),
        }
    )
    obs = Observed(done=done_through(spec, 1), metrics={0: m(0, 0.8), 1: classed})
    st = status(spec, obs, next_action(spec, obs), now="t")
    first, second = st.iterations
    assert first.outcomes is None and first.outcomes_source is None
    assert second.outcomes_source == "gold"
    assert second.outcomes == {"harmful": {"refusal": 0.5, "deflection": 0.1235, "unsafe": 0.25}}
    dumped = second.model_dump(by_alias=True)
    assert dumped["outcomesSource"] == "gold"
