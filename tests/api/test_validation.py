"""Bad run files: `selfmoa validate` / `selfmoa run` refuse each with one line naming the field or
the file, exit code 2, and nothing written anywhere."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfmoa.api import SpecError, namespace_problem, parse_run, run_name_problem
from selfmoa.api.spec import MAX_SEED, AlignmentRun
from selfmoa.cli import main


def doc(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "selfmoa.dev/v1alpha1",
        "kind": "AlignmentRun",
        "spec": {"policy": {"model": "selfmoa/tiny"}, **(spec or {})},
    }
    if metadata:
        out["metadata"] = metadata
    return out


def write(tmp_path: Path, obj: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    # JSON is YAML: it keeps NaN, NUL bytes and big numbers exactly as given.
    path.write_text(yaml.safe_dump(obj, allow_unicode=False))
    return path


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one stderr line of a command that must exit 2."""
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("selfmoa: error: ")
    assert "Traceback" not in out.err
    return lines[0].removeprefix("selfmoa: error: ")


# ------------------------------------------------------------------ names

BAD_NAMES = [
    "../../x",
    "a/b",
    "x" * 64,
    "x" * 300,
    "a\x00b",
    "a.b",
    "Run",
    "1run",
    "run-",
    "",
    "run\n",
    " run",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_run_name_rule(name: str) -> None:
    problem = run_name_problem(name)
    assert problem is not None
    assert "\n" not in problem and len(problem) < 300


@pytest.mark.parametrize("name", ["a", "run", "tiny-cpu", "r" * 63, "a1-b2"])
def test_good_run_names(name: str) -> None:
    assert run_name_problem(name) is None
    assert parse_run(doc(name=name)).name == name


def test_non_string_names() -> None:
    assert run_name_problem(12) is not None
    assert run_name_problem(None) is not None
    assert namespace_problem(["a"]) is not None


@pytest.mark.parametrize("ns", ["../x", "a/b", "a.b", "N", "n" * 64, "a\x00"])
def test_namespace_rule(ns: str) -> None:
    assert namespace_problem(ns) is not None


@pytest.mark.parametrize("ns", ["default", "kube-system", "1ns", "n" * 63])
def test_good_namespaces(ns: str) -> None:
    assert namespace_problem(ns) is None


@pytest.mark.parametrize("name", ["../../x", "a/b", "x" * 300, "a\x00b", "a.b"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_bad_metadata_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, name: str
) -> None:
    store = tmp_path / "store"
    path = write(tmp_path, doc(name=name))
    extra = ["--store", str(store), "--quiet"] if command == "run" else []
    line = refused(capsys, [command, str(path), *extra])
    assert line.startswith("metadata.name: run name ")
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


@pytest.mark.parametrize("ns", ["../../x", "a/b", "n" * 100, "a\x00"])
def test_cli_refuses_bad_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ns: str
) -> None:
    path = write(tmp_path, doc(name="ok", namespace=ns))
    assert refused(capsys, ["validate", str(path)]).startswith("metadata.namespace: namespace ")


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--name", "../../x", "metadata.name"), ("--namespace", "../..", "metadata.namespace")],
)
def test_run_flags_cannot_escape_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, field: str
) -> None:
    store = tmp_path / "deep" / "store"
    path = write(tmp_path, doc(name="ok"))
    line = refused(capsys, ["run", str(path), "--store", str(store), flag, value, "--quiet"])
    assert line.startswith(f"{field}: ")
    assert not (tmp_path / "deep").exists()
    assert not (tmp_path / "x").exists()


def test_name_set_after_validation_is_still_checked() -> None:
    run = parse_run(doc(name="ok"))
    run.metadata["name"] = "../../x"
    with pytest.raises(SpecError, match=r"^metadata.name: "):
        _ = run.name
    run.metadata["name"] = "ok"
    run.metadata["namespace"] = "/etc"
    with pytest.raises(SpecError, match=r"^metadata.namespace: "):
        _ = run.namespace


def test_defaults_when_metadata_is_absent() -> None:
    run = AlignmentRun.model_validate(doc())
    assert (run.name, run.namespace) == ("run", "default")


# ------------------------------------------------------------------ files


def test_non_utf8_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"spec:\n  policy: {model: selfmoa/tiny}\n  # caf\xe9\n")
    line = refused(capsys, ["validate", str(path)])
    assert line.startswith(f"{path}: line 3: not UTF-8")
    assert "0xe9" in line


def test_nul_byte_in_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"spec:\n  policy: {model: selfmoa/tiny\x00}\n")
    assert refused(capsys, ["validate", str(path)]).startswith(f"{path}: ")


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is a directory" in refused(capsys, ["validate", str(tmp_path)])


# ------------------------------------------------------------------ fields

BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    # non-finite floats, anywhere
    (
        {
            "judges": [
                {"name": "a", "objective": "safety", "weight": math.nan},
                {"name": "b", "objective": "helpfulness"},
            ]
        },
        "spec.judges[0].weight: Input should be a finite number",
    ),
    ({"ensemble": {"threshold": math.inf}}, "spec.ensemble.threshold: Input should be a finite"),
    (
        {"training": {"learningRate": math.nan}},
        "spec.training.learningRate: Input should be a finite",
    ),
    ({"training": {"beta": -math.inf}}, "spec.training.beta: Input should be a finite"),
    ({"preferences": {"weights": {"safety": math.inf}}}, "spec.preferences.weights.safety: "),
    ({"preferences": {"minMargin": math.nan}}, "spec.preferences.minMargin: "),
    ({"stopWhen": {"attackSuccessRateBelow": math.nan}}, "spec.stopWhen.attackSuccessRateBelow: "),
    ({"training": {"lossWeights": [1.0, math.nan]}}, "spec.training.lossWeights[1]: "),
    # out-of-range integers
    (
        {"sampling": {"seed": "1e30"}},
        'spec.sampling.seed: Input should be a valid integer (got "1e30")',
    ),
    (
        {"sampling": {"seed": 10**30}},
        "spec.sampling.seed: Input should be less than or equal to 2147483647",
    ),
    ({"sampling": {"seed": 1e30}}, "spec.sampling.seed: Input should be a valid integer"),
    ({"sampling": {"seed": -1}}, "spec.sampling.seed: Input should be greater than or equal to 0"),
    ({"training": {"seed": MAX_SEED + 1}}, "spec.training.seed: "),
    (
        {
            "judges": [
                {"name": "a", "objective": "safety", "seed": 2**63},
                {"name": "b", "objective": "helpfulness"},
            ]
        },
        "spec.judges[0].seed: ",
    ),
    (
        {"sampling": {"maxNewTokens": 10**9}},
        "spec.sampling.maxNewTokens: Input should be less than or equal to 32768",
    ),
    ({"evaluation": {"maxNewTokens": 10**6}}, "spec.evaluation.maxNewTokens: "),
    (
        {"trainer": {"activeDeadlineSeconds": 10**8}},
        "spec.trainer.activeDeadlineSeconds: Input should be less than or equal to 604800",
    ),
    # strict types: no bool for an int, no string for a number or a bool
    ({"iterations": True}, "spec.iterations: Input should be a valid integer (got true)"),
    ({"iterations": 2.0}, "spec.iterations: Input should be a valid integer (got 2.0)"),
    ({"iterations": "3"}, "spec.iterations: Input should be a valid integer"),
    (
        {"sampling": {"temperature": True}},
        "spec.sampling.temperature: Input should be a valid number (got true)",
    ),
    ({"sampling": {"topP": "0.9"}}, "spec.sampling.topP: Input should be a valid number"),
    ({"redTeam": {"adaptive": "yes"}}, "spec.redTeam.adaptive: Input should be a valid boolean"),
    ({"suspend": 1}, "spec.suspend: Input should be a valid boolean (got 1)"),
    # Kubernetes quantities
    (
        {"trainer": {"resources": {"cpu": "lots"}}},
        "spec.trainer.resources.cpu: 'lots' not a Kubernetes quantity",
    ),
    ({"trainer": {"resources": {"memory": "16 GB"}}}, "spec.trainer.resources.memory: "),
    ({"trainer": {"resources": {"cpu": "-1"}}}, "spec.trainer.resources.cpu: "),
    (
        {"trainer": {"resources": {"cpu": 4}}},
        "spec.trainer.resources.cpu: Input should be a valid string",
    ),
    # empty or blank strings
    ({"redTeam": {"categories": ["violence", ""]}}, "spec.redTeam.categories[1]: "),
    (
        {"redTeam": {"categories": ["  "]}},
        "spec.redTeam.categories[0]: '  ' must not be empty or blank",
    ),
    ({"redTeam": {"categories": ["a", "a"]}}, "spec.redTeam.categories: duplicate category ['a']"),
    ({"training": {"lora": {"targetModules": [""]}}}, "spec.training.lora.targetModules[0]: "),
    # URLs and object names
    (
        {"storage": {"endpoint": "minio:9000"}},
        "spec.storage.endpoint: 'minio:9000' must be an http:// or https:// URL",
    ),
    ({"storage": {"secretRef": "My_Secret"}}, "spec.storage.secretRef: "),
    ({"storage": {"timeoutSeconds": 0}}, "spec.storage.timeoutSeconds: "),
    (
        {"serving": {"engine": "openai", "endpoints": {"selfmoa/tiny": "localhost:8000"}}},
        "spec.serving.endpoints.selfmoa/tiny: ",
    ),
    # snake_case and misspelt keys
    (
        {"sampling": {"max_new_tokens": 5}},
        "spec.sampling.max_new_tokens: unknown field; did you mean maxNewTokens?",
    ),
    ({"red_team": {}}, "spec.red_team: unknown field; did you mean redTeam?"),
    (
        {"trainer": {"active_deadline_seconds": 60}},
        "spec.trainer.active_deadline_seconds: unknown field; did you mean activeDeadlineSeconds?",
    ),
    (
        {"sampling": {"maxNewToken": 5}},
        "spec.sampling.maxNewToken: unknown field; did you mean maxNewTokens?",
    ),
    (
        {
            "judges": [
                {"name": "a", "objective": "safety", "min_coverage": 0.5},
                {"name": "b", "objective": "helpfulness"},
            ]
        },
        "spec.judges[0].min_coverage: unknown field; did you mean minCoverage?",
    ),
    (
        {"training": {"lora": {"target_modules": ["q"]}}},
        "spec.training.lora.target_modules: unknown field; did you mean targetModules?",
    ),
    ({"zzz": 1}, "spec.zzz: unknown field"),
    # evaluation-only judges must measure what the evaluation reports
    (
        {"evaluation": {"judges": [{"name": "e", "objective": "helpfulness"}]}},
        "spec.evaluation.judges: needs a safety judge (attack success is a safety figure)",
    ),
    (
        {"evaluation": {"judges": [{"name": "e", "objective": "safety"}]}},
        "spec.evaluation.judges: needs a helpfulness judge (helpfulness and "
        "over-refusal are helpfulness figures)",
    ),
]


@pytest.mark.parametrize(
    ("fields", "expected"),
    BAD_FIELDS,
    ids=[e.split(":")[0] + f"-{i}" for i, (_, e) in enumerate(BAD_FIELDS)],
)
def test_validate_refuses_with_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, doc(fields, name="ok"))
    line = refused(capsys, ["validate", str(path)])
    assert line.startswith(expected), line
    assert len(line) < 400


def test_unknown_field_without_a_close_match_has_no_guess() -> None:
    with pytest.raises(SpecError) as e:
        parse_run(doc({"zzz": 1}))
    assert str(e.value) == "spec.zzz: unknown field"


def test_python_callers_may_still_use_snake_case() -> None:
    # Only the wire (files, the API) must be camelCase; code builds models by field name.
    from selfmoa.api.spec import SamplingSpec

    assert SamplingSpec(max_new_tokens=7).max_new_tokens == 7


@pytest.mark.parametrize(
    "fields",
    [
        {"trainer": {"resources": {"cpu": "500m", "memory": "16Gi"}}},
        {"trainer": {"resources": {"cpu": "1.5", "memory": "1e9"}}},
        {"sampling": {"seed": MAX_SEED, "maxNewTokens": 32768}},
        {"trainer": {"activeDeadlineSeconds": 7 * 24 * 3600}},
        {"training": {"epochs": 2}},
        {"storage": {"uri": "s3://bkt/p", "endpoint": "http://minio:9000", "timeoutSeconds": 30}},
    ],
)
def test_limits_themselves_are_accepted(fields: dict[str, Any]) -> None:
    parse_run(doc(fields))


def test_a_reset_without_data_is_refused_unless_the_policy_is_tiny() -> None:
    # The reset stage would fail at run time, after the serving pods started: refused here.
    spec = {"policy": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}, "safetyReset": {"enabled": True}}
    with pytest.raises(SpecError, match=r"^spec\.safetyReset\.data: required when the policy"):
        parse_run({"metadata": {"name": "r"}, "spec": spec})
    spec["safetyReset"]["data"] = "s3://bkt/reset.jsonl"  # type: ignore[index]
    parse_run({"metadata": {"name": "r"}, "spec": spec})
    tiny = {"policy": {"model": "selfmoa/tiny"}, "safetyReset": {"enabled": True}}
    parse_run({"metadata": {"name": "r"}, "spec": tiny})


@pytest.mark.parametrize(
    ("limit", "over", "words"),
    [
        (
            "4096",
            {"sampling": {"maxNewTokens": 4000}},
            "spec.sampling.maxNewTokens: the policy's answers ask for 4000 completion tokens, "
            "which leaves 96 for the prompt within vLLM's --max-model-len 4096",
        ),
        (
            "3200",
            {"redTeam": {"model": "org/red", "promptsPerRequest": 64}},
            "spec.redTeam.promptsPerRequest: 64 attack prompts per red-team request ask for 3072 "
            "completion tokens, which leaves 128 for the prompt within vLLM's --max-model-len 3200",
        ),
    ],
)
def test_token_budgets_must_fit_vllms_max_model_len(
    limit: str, over: dict[str, Any], words: str
) -> None:
    # vLLM answers a prompt plus max_tokens above --max-model-len with HTTP 400, mid-run:
    # refused here, naming the field, before any GPU is spent.
    spec: dict[str, Any] = {
        "policy": {"model": "org/p"},
        "serving": {"engine": "vllm", "extraArgs": ["--max-model-len", limit]},
        **over,
    }
    with pytest.raises(SpecError) as err:
        parse_run({"metadata": {"name": "r"}, "spec": spec})
    assert str(err.value).startswith(words), err.value
    # The same budgets fit a larger context, and without vLLM nothing is checked here.
    spec["serving"]["extraArgs"] = ["--max-model-len=8192"]
    parse_run({"metadata": {"name": "r"}, "spec": spec})
    spec["serving"] = {"engine": "transformers"}
    parse_run({"metadata": {"name": "r"}, "spec": spec})


def test_a_max_model_len_that_is_not_a_number_is_refused() -> None:
    spec = {
        "policy": {"model": "org/p"},
        "serving": {"engine": "vllm", "extraArgs": ["--max-model-len", "lots"]},
    }
    with pytest.raises(SpecError, match=r"^spec\.serving\.extraArgs: --max-model-len 'lots'"):
        parse_run({"metadata": {"name": "r"}, "spec": spec})
