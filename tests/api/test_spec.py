"""The spec model: defaults, and bad input that names the field in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selfmoa.api import SpecError, load_run, parse_run


def spec(**fields: Any) -> dict[str, Any]:
    return {"spec": {"policy": {"model": "selfmoa/tiny"}, **fields}}


def test_defaults_round_trip() -> None:
    run = parse_run(spec())
    wire = run.spec.wire()
    assert wire["redTeam"]["promptsPerIteration"] == 256
    assert parse_run({"spec": wire}).spec == run.spec
    assert run.name == "run" and run.namespace == "default"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"iterations": 0}, "spec.iterations: Input should be greater than or equal to 1"),
        ({"redTeam": {"categories": []}}, "spec.redTeam.categories"),
        ({"bogus": 1}, "spec.bogus: unknown field"),
        ({"sampling": {"temperature": "hot"}}, "spec.sampling.temperature"),
        (
            {"judges": [{"name": "a", "objective": "safety"}]},
            "spec.judges: needs at least one non-gold helpfulness judge",
        ),
        (
            {
                "judges": [
                    {"name": "a", "objective": "safety"},
                    {"name": "a", "objective": "helpfulness"},
                ]
            },
            "spec.judges: duplicate name(s) ['a']",
        ),
        (
            {
                "judges": [
                    {"name": "j", "objective": "safety", "kind": "llm"},
                    {"name": "h", "objective": "helpfulness"},
                ]
            },
            "spec.judges[0]",
        ),
        (
            {"preferences": {"weights": {"safety": 1, "honesty": 1}}},
            "spec.preferences.weights: unknown objective",
        ),
        ({"storage": {"uri": "ftp://x"}}, "spec.storage.uri"),
        ({"evaluation": {"ceiling": True}}, "spec.evaluation.ceiling: needs evaluation.goldJudge"),
        (
            {"serving": {"engine": "openai"}},
            "spec.serving.endpoints: no endpoint for model(s) ['selfmoa/tiny']",
        ),
        (
            {
                "policy": {"model": "org/m", "adapter": "s3://bkt/adapters/a"},
                "serving": {"engine": "vllm"},
            },
            "spec.policy.adapter: a served policy can't start from an s3:// adapter",
        ),
        (
            {"training": {"loss": "modpo"}, "preferences": {"weights": {"helpfulness": 1}}},
            "training.loss modpo: needs preferences.weights.safety > 0",
        ),
        (
            {"policy": {"model": "org/m"}, "stopWhen": {"maxCapabilityDrop": 0.1}},
            "spec.stopWhen.maxCapabilityDrop: needs a capability measure: evaluation.lmEval",
        ),
        ({"evaluation": {"lmEval": {"tasks": []}}}, "spec.evaluation.lmEval.tasks"),
        ({"evaluation": {"lmEval": {"tasks": ["hellaswag"], "limit": -1}}}, "lmEval.limit"),
        ({"preferences": {"declineContrast": 1.5}}, "spec.preferences.declineContrast"),
        (
            {
                "evaluation": {"validation": "s3://bkt/val.jsonl"},
                "stopWhen": {"maxCapabilityDrop": 0.1},
            },
            "spec.stopWhen.maxCapabilityDrop: needs evaluation.validation builtin or none",
        ),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_run(spec(**fields))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_gold_judge_only_for_tiny() -> None:
    with pytest.raises(SpecError, match="gold judge exists only for the tiny policy"):
        parse_run(
            {
                "spec": {
                    "policy": {"model": "Qwen/Qwen2.5-0.5B-Instruct"},
                    "evaluation": {"goldJudge": True},
                }
            }
        )


def test_models_are_deduplicated() -> None:
    run = parse_run(
        {
            "spec": {
                "policy": {"model": "p"},
                "redTeam": {"model": "r"},
                "judges": [
                    {"name": "a", "objective": "safety", "kind": "llm", "model": "r"},
                    {"name": "b", "objective": "helpfulness", "kind": "llm", "model": "j"},
                ],
            }
        }
    )
    assert run.spec.models() == ["p", "r", "j"]


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_run(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_run(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: Deployment\n")
    with pytest.raises(SpecError, match="no AlignmentRun"):
        load_run(empty)
    nospec = tmp_path / "nospec.yaml"
    nospec.write_text("kind: AlignmentRun\nmetadata: {name: x}\n")
    with pytest.raises(SpecError, match="spec: missing"):
        load_run(nospec)


def test_an_s3_starting_adapter_is_fine_where_it_is_not_served_as_is() -> None:
    adapter = {"model": "org/m", "adapter": "s3://bkt/adapters/a"}
    # In-process engines download it; with the reset, the servers get the reset's stored adapter.
    assert parse_run(spec(policy=adapter)).spec.policy.adapter == adapter["adapter"]
    served = spec(
        policy=adapter,
        serving={"engine": "vllm"},
        safetyReset={"enabled": True, "data": "s3://bkt/reset.jsonl"},
    )
    assert parse_run(served).spec.safety_reset.enabled
    hub = {"model": "org/m", "adapter": "org/m-lora"}
    assert parse_run(spec(policy=hub, serving={"engine": "vllm"})).spec.policy.adapter
