"""The efficacy benchmark's run files: `--set` changes, run names, one-line errors (no runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from fakes import load_file

BENCH = Path(__file__).resolve().parent / "bench_efficacy.py"
#: A DNS-1035 label, what a run's metadata.name must be.
LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_file("bench_efficacy", BENCH)


def test_set_values_are_yaml(bench: ModuleType) -> None:
    assert bench.parse_set("preferences.maxPairsPerPrompt=2") == (
        "preferences.maxPairsPerPrompt",
        2,
    )
    assert bench.parse_set("preferences.acceptableChosen=true") == (
        "preferences.acceptableChosen",
        True,
    )
    assert bench.parse_set("preferences.weights={safety: 1}") == (
        "preferences.weights",
        {"safety": 1},
    )


@pytest.mark.parametrize("arg", ["preferences.maxPairsPerPrompt", "=2", "a..b=1", "x=[1"])
def test_malformed_set_fails_in_one_line(bench: ModuleType, arg: str) -> None:
    with pytest.raises(SystemExit) as e:
        bench.parse_set(arg)
    assert "--set" in str(e.value) and "\n" not in str(e.value)


def test_changes_reach_the_spec_after_the_configuration(bench: ModuleType) -> None:
    changes = [("preferences.maxPairsPerPrompt", 2), ("evaluation.lmEval.limit", 5)]
    run = bench.config("contrast-0.5", 3, changes)
    spec = run["spec"]
    assert spec["preferences"]["maxPairsPerPrompt"] == 2
    assert spec["preferences"]["declineContrast"] == 0.5  # the configuration's own change stays
    assert spec["evaluation"]["lmEval"] == {"limit": 5}
    assert spec["sampling"]["seed"] == 3
    # The gold control sets goldBaseline itself; a --set of the same key comes last and wins.
    gold = bench.config("gold", 0, [("evaluation.goldBaseline", False)])
    assert gold["spec"]["evaluation"]["goldBaseline"] is False


def test_run_names_tell_specs_apart(bench: ModuleType) -> None:
    def name(config: str, seed: int, changes: list[tuple[str, object]]) -> str:
        return str(bench.config(config, seed, changes)["metadata"]["name"])

    plain = name("contrast-0.5", 1, [])
    a = name("contrast-0.5", 1, [("sampling.responsesPerPrompt", 8)])
    b = name("contrast-0.5", 1, [("sampling.responsesPerPrompt", 6)])
    assert plain.startswith("contrast-05-") and plain.endswith("-s1")
    assert len({plain, a, b}) == 3
    assert all(LABEL.match(n) for n in (plain, a, b))
    # The same changes on another seed: the same tag, so the seeds' runs read as one set.
    assert name("contrast-0.5", 2, [("sampling.responsesPerPrompt", 8)]) == a[:-1] + "2"
    # A field a started run may change (more iterations) keeps the name: the run is extended.
    assert name("contrast-0.5", 1, [("iterations", 9)]) == plain
    # So does a change that spells the default out; a changed example does not.
    spec = bench.config("contrast-0.5", 1, [])["spec"]
    edited = {**spec, "sampling": {**spec["sampling"], "temperature": 0.3}}
    assert bench.run_name("contrast-0.5", 1, edited) != plain
    assert bench.run_name("contrast-0.5", 1, spec) == plain


def test_a_finished_run_is_reused_only_with_its_own_spec(bench: ModuleType, tmp_path: Path) -> None:
    from selfmoa.api.spec import AlignmentRunSpec

    run = bench.config("default", 0, [])
    root = tmp_path / "runs" / "default" / run["metadata"]["name"]
    root.mkdir(parents=True)
    assert not bench.finished_with(root, run["spec"])
    wire = AlignmentRunSpec.model_validate(run["spec"]).wire()
    (root / "run.json").write_text(json.dumps({"spec": wire}))
    (root / "status.json").write_text(json.dumps({"phase": "Running"}))
    assert not bench.finished_with(root, run["spec"])
    (root / "status.json").write_text(json.dumps({"phase": "Succeeded"}))
    assert bench.finished_with(root, run["spec"])
    longer = bench.config("default", 0, [("iterations", run["spec"]["iterations"] + 1)])
    assert not bench.finished_with(root, longer["spec"])  # resumed for the new iteration


def test_a_change_the_spec_refuses_fails_before_any_run(bench: ModuleType) -> None:
    bench.check(bench.config("default", 0, [("preferences.maxPairsPerPrompt", 2)]))
    with pytest.raises(SystemExit) as e:
        bench.check(bench.config("default", 0, [("prefernces.maxPairsPerPrompt", 2)]))
    assert "did you mean preferences" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="is not a mapping"):
        bench.config("default", 0, [("judges.x", 1)])
