"""The command line: --help everywhere, one clear line and exit 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from selfmoa.cli import main

TINY = Path(__file__).parents[2] / "manifests" / "examples" / "tiny.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfmoa.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "command", [[], ["run"], ["validate"], ["stage"], ["operator"], ["serve"], ["crd"]]
)
def test_help(command: list[str]) -> None:
    r = run_cli(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from selfmoa.cli import build_parser; "
        "build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'transformers', 'kopf', 'boto3') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(TINY)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spec:\n  policy: {model: selfmoa/tiny}\n  iterations: -1\n", "spec.iterations"),
        (
            "spec:\n  policy: {model: selfmoa/tiny}\n  redTeam: {promptsPerIteration: lots}\n",
            "spec.redTeam.promptsPerIteration",
        ),
        ("spec: [\n", "not valid YAML"),
        ("kind: AlignmentRun\n", "spec: missing"),
    ],
)
def test_run_bad_file_is_one_line_exit_2(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(content)
    r = run_cli("run", str(f), "--store", str(tmp_path / "runs"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_run_missing_file(tmp_path: Path) -> None:
    r = run_cli("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_run_bad_store_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(TINY), "--store", "gs://bucket"]) == 2
    assert "--store" in capsys.readouterr().err


def test_unknown_command_and_flags() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("run").returncode == 2


def test_stage_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"file://{tmp_path}/default/x"
    assert main(["stage", "nonsense", "--run-uri", uri, "--iteration", "1"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["stage", "train", "--run-uri", uri, "--iteration", "1"]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert main(["stage", "train", "--run-uri", uri, "--iteration", "0", "--spec", str(TINY)]) == 2
    assert "not part of iteration 0" in capsys.readouterr().err
    assert main(["stage", "train", "--run-uri", uri, "--iteration", "9", "--spec", str(TINY)]) == 2
    assert "past spec.iterations" in capsys.readouterr().err


def test_stage_missing_input_is_a_stage_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("SELFMOA_TERMINATION_LOG", str(log))
    uri = f"file://{tmp_path}/default/x"
    assert (
        main(["stage", "respond", "--run-uri", uri, "--iteration", "1", "--spec", str(TINY)]) == 1
    )
    err = capsys.readouterr().err
    assert "redteam" in err and "has not finished" in err
    assert "has not finished" in log.read_text()


@pytest.mark.parametrize(
    "command",
    ["serve", "fetch", "operator", "crd", "export", "labels", "adapter-agent", "run", "stage"],
)
def test_a_bad_flag_is_one_line_and_exit_2_in_every_command(command: str) -> None:
    # One parser class for every command (selfmoa.api.exits.Parser): no usage block.
    r = run_cli(command, "--no-such-flag")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"selfmoa {command}: error: "), r.stderr
    assert lines[0].endswith("(see --help)")
