"""The efficacy benchmark's run files: `--set` changes, run names, one-line errors (no runs)."""

from __future__ import annotations

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


def test_run_names_tell_changes_apart(bench: ModuleType) -> None:
    plain = bench.run_name("contrast-0.5", 1)
    a = bench.run_name("contrast-0.5", 1, [("sampling.responsesPerPrompt", 8)])
    b = bench.run_name("contrast-0.5", 1, [("sampling.responsesPerPrompt", 4)])
    assert plain == "contrast-05-s1"
    assert len({plain, a, b}) == 3
    assert all(LABEL.match(n) for n in (plain, a, b))
    assert bench.config("default", 1, [("sampling.responsesPerPrompt", 8)])["metadata"] == {
        "name": a.replace("contrast-05", "default")
    }


def test_a_change_the_spec_refuses_fails_before_any_run(bench: ModuleType) -> None:
    bench.check(bench.config("default", 0, [("preferences.maxPairsPerPrompt", 2)]))
    with pytest.raises(SystemExit) as e:
        bench.check(bench.config("default", 0, [("prefernces.maxPairsPerPrompt", 2)]))
    assert "did you mean preferences" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="is not a mapping"):
        bench.config("default", 0, [("judges.x", 1)])
