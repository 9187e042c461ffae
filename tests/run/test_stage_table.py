"""The stage table is the one list of stages: modules, layout, planner and CLI agree with it."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import selfmoa.stages
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.cli import build_parser
from selfmoa.run import layout, stage_table

#: Modules of selfmoa.stages that are machinery, not stages.
# Helpers the stages share (not stages): their context, the runner, sampling, prompt sources,
# the self-written decline, evaluation judges and capability measures (lm_eval: the
# lm-evaluation-harness runner the capability measure calls).
NOT_STAGES = {
    "base",
    "runner",
    "sampling",
    "sources",
    "decline",
    "evaluators",
    "capability",
    "perplexity",
    "lm_eval",
}


def _stage_modules() -> set[str]:
    path = selfmoa.stages.__path__
    return {m.name for m in pkgutil.iter_modules(path)} - NOT_STAGES


def test_every_stage_module_has_a_definition_and_back() -> None:
    assert _stage_modules() == set(stage_table.NAMES)


@pytest.mark.parametrize("definition", stage_table.STAGES, ids=lambda d: d.name)
def test_each_definition_names_a_module_with_run(definition: stage_table.StageDef) -> None:
    spec = importlib.util.find_spec(definition.module)
    assert spec is not None and spec.origin is not None
    # Read, don't import: a stage module may load torch.
    tree = ast.parse(Path(spec.origin).read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body) or (
        # A stage package re-exports run from a submodule.
        any(
            isinstance(n, ast.ImportFrom) and any(a.name == "run" for a in n.names)
            for n in tree.body
        )
    )


def test_reads_name_stages_that_run_earlier() -> None:
    order = {name: i for i, name in enumerate(stage_table.NAMES)}
    for d in stage_table.STAGES:
        for r in d.reads:
            assert r in order and order[r] < order[d.name], (d.name, r)


def test_writes_are_layout_names() -> None:
    known = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    for d in stage_table.STAGES:
        assert set(d.writes) <= known, d.name


def test_iterations_follow_the_table() -> None:
    assert stage_table.stages_of(0, reset=False) == ("evaluate",)
    assert stage_table.stages_of(0, reset=True) == ("reset", "evaluate")
    assert stage_table.stages_of(3, reset=True) == stage_table.LOOP
    assert "reset" not in stage_table.LOOP
    runs = list(stage_table.stages_of_run(2, reset=True))
    assert runs[:2] == [(0, "reset"), (0, "evaluate")] and len(runs) == 2 + 2 * len(
        stage_table.LOOP
    )


def test_cli_help_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stage", "--help"])
    out = capsys.readouterr().out
    for d in stage_table.STAGES:
        assert d.name in out and d.description[:30] in out.replace("\n", " ")


def test_unknown_stage_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="one of: reset, redteam"):
        stage_table.get("nope")


def test_training_stages_are_the_ones_that_train() -> None:
    assert {d.name for d in stage_table.STAGES if d.trains} == {"reset", "train"}
    assert AlignmentRunSpec  # the table needs no spec to be read
