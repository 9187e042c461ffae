"""Exit codes a script can act on, validation of what the cluster will see, and no silent reuse
of an earlier run's stages: each row of the README's "Exit codes and errors" here or beside it
(tests/store/test_outage.py, tests/controller/test_truthful_failures.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes import FakeStages
from selfmoa.api import exits
from selfmoa.api.exits import Exit, exit_for
from selfmoa.api.loader import SpecError
from selfmoa.cli import main
from selfmoa.engines.http import EndpointUnavailable
from selfmoa.run import layout
from selfmoa.run.identity import take_over
from selfmoa.run.planner import Finish, Observed, Reuse, StageFailure, next_action, status
from selfmoa.stages import StageError, runner
from selfmoa.store import StoreError, StoreUnavailable, open_store

TINY = Path(__file__).parents[2] / "manifests" / "examples" / "tiny.yaml"


def test_every_error_class_has_its_code() -> None:
    assert exit_for(SpecError("spec.x: bad")) == Exit.BAD_INPUT == 2
    assert exit_for(StoreError("bucket b does not exist")) == Exit.BAD_INPUT
    assert exit_for(StoreUnavailable("S3 endpoint stopped answering")) == Exit.UNAVAILABLE == 75
    assert exit_for(EndpointUnavailable("POST x failed")) == Exit.UNAVAILABLE
    assert exit_for(StageError("redteam has not finished")) == Exit.FAILED == 1
    assert exit_for(RuntimeError("a bug")) == Exit.FAILED
    assert exit_for(KeyboardInterrupt()) == Exit.INTERRUPTED == 130


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (None, "StageFailed"),
        (1, "StageFailed"),
        (2, "InvalidInput"),
        (75, "EnvironmentUnavailable"),
        (137, "StageFailed"),  # OOMKilled and other signals: the stage failed
    ],
)
def test_a_stages_exit_code_is_the_runs_reason(code: int | None, reason: str) -> None:
    spec = yaml.safe_load(TINY.read_text())
    from selfmoa.api import parse_run

    run = parse_run(spec)
    observed = Observed(failure=StageFailure(1, "judge", "it broke", exit_code=code))
    action = next_action(run.spec, observed)
    assert isinstance(action, Finish) and action.reason == reason
    assert action.message.startswith("stage judge of iteration 1 failed: it broke")
    assert exits.reason_for(code) == reason


# ------------------------------------------------------------------ whose run a store holds


def _saved(uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r", "namespace": "ml"}
    if uid:
        meta["uid"] = uid
    return {"metadata": meta, "started": "2026-12-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("saved", "uid", "finished", "changed", "fresh", "decision"),
    [
        (None, "u1", 0, [], False, "start"),
        (None, "u1", 0, [], True, "start"),
        # The same object again (an operator restart): resume, never delete, even if asked.
        ("u1", "u1", 5, [], False, "resume"),
        ("u1", "u1", 5, [], True, "resume"),
        ("u1", "u1", 5, ["policy"], False, "refuse"),
        # A new object with an earlier one's name.
        ("u0", "u1", 5, [], False, "reuse"),
        ("u0", "u1", 5, [], True, "fresh"),
        ("u0", "u1", 0, [], False, "start"),
        ("u0", "u1", 5, ["policy"], False, "refuse"),
        ("u0", "u1", 5, ["policy"], True, "fresh"),
        # Local runs (no uid): the same command again resumes; --fresh starts again.
        (None, None, 0, [], False, "start"),
        ("", None, 5, [], False, "resume"),
        ("", None, 5, [], True, "fresh"),
        ("", None, 5, ["sampling"], False, "refuse"),
    ],
)
def test_take_over_table(
    saved: str | None,
    uid: str | None,
    finished: int,
    changed: list[str],
    fresh: bool,
    decision: str,
) -> None:
    doc = None if saved is None else _saved(saved or None)
    got = take_over(doc, uid=uid, finished=finished, changed=changed, fresh=fresh)
    assert got.decision == decision
    if decision == "reuse":
        assert got.reuse == Reuse(5, "AlignmentRun ml/r (uid u0, started 2026-12-01T00:00:00Z)")
        assert "reusing 5 finished stage(s)" in got.message and "fresh-start" in got.message
    if decision == "refuse":
        assert got.message.startswith(f"spec.{changed[0]}: ") or "different spec." in got.message


def test_the_reuse_condition_is_in_the_status() -> None:
    from selfmoa.api import parse_run

    spec = parse_run(yaml.safe_load(TINY.read_text())).spec
    observed = Observed(reused=Reuse(3, "AlignmentRun ml/r (uid u0, started T)"))
    st = status(spec, observed, next_action(spec, observed), now="N")
    (cond,) = [c for c in st.conditions if c.type == "StagesReused"]
    assert (cond.status, cond.reason) == ("True", "EarlierRunResumed")
    assert cond.message == "3 finished stage(s) reused from AlignmentRun ml/r (uid u0, started T)"
    again = status(spec, observed, next_action(spec, observed), now="M", previous=st)
    assert [c.last_transition_time for c in again.conditions if c.type == "StagesReused"] == ["N"]


# ------------------------------------------------------------------ the command line


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _file(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_validate_refuses_a_manifest_without_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"kind": "AlignmentRun", "spec": {"policy": {"model": "selfmoa/tiny"}}}
    path = _file(tmp_path, doc)
    assert main(["validate", path]) == 2
    assert "metadata.name: required" in _one_line(capsys)
    # `selfmoa run` says how to give one; with --name it runs under that name.
    assert main(["run", path, "--store", str(tmp_path / "s")]) == 2
    assert _one_line(capsys).endswith("or pass --name")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("s3:///runs", "spec.storage.uri: 's3:///runs' must be file://PATH or s3://BUCKET"),
        ("s3://My_Bucket/runs", "spec.storage.uri: 's3://My_Bucket/runs' must be file://PATH"),
        ("s3://ab/runs", "3 to 63 lowercase"),
        ("s3://a..b/runs", "can't hold '..'"),
        ("s3://192.168.1.10/runs", "can't look like an IP address"),
    ],
)
def test_validate_refuses_a_bucket_s3_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: str, words: str
) -> None:
    doc = {
        "metadata": {"name": "r"},
        "spec": {"policy": {"model": "selfmoa/tiny"}, "storage": {"uri": uri}},
    }
    path = _file(tmp_path, doc)
    assert main(["validate", path]) == 2
    assert words in _one_line(capsys)
    # Even when --store would override it here: the cluster sees the file, not the flag.
    assert main(["run", path, "--store", str(tmp_path / "s")]) == 2
    assert words in _one_line(capsys)


def test_run_refuses_a_store_flag_naming_a_bad_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(TINY), "--store", "s3://Bad_Bucket/x"]) == 2
    assert _one_line(capsys).startswith("selfmoa: error: --store: bucket 'Bad_Bucket'")


def _stage_with(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def load(name: str) -> Any:
        def run(ctx: Any, out: Any) -> dict[str, Any]:
            raise error

        return run

    monkeypatch.setattr(runner, "load_stage", load)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StoreUnavailable("S3 endpoint http://s3 stopped answering on s3://b/k"), 75),
        (EndpointUnavailable("POST http://vllm/v1/chat/completions failed after 5 attempts"), 75),
        (StoreError("access denied to s3://bkt/k (AccessDenied)"), 2),
        (StageError("redteam has not finished"), 1),
        (ValueError("a bug"), 1),
    ],
)
def test_a_stage_pod_exits_with_its_class_and_says_why(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    code: int,
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("SELFMOA_TERMINATION_LOG", str(log))
    _stage_with(monkeypatch, error)
    uri = f"file://{tmp_path}/default/x"
    args = ["stage", "reset", "--run-uri", uri, "--iteration", "0", "--spec", str(TINY)]
    assert main(args) == code
    err = capsys.readouterr().err
    assert str(error) in err.splitlines()[-1] and str(error) in log.read_text()


def test_local_run_resumes_visibly_and_starts_fresh_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeStages({0: 0.5, 1: 0.3})
    monkeypatch.setattr(runner, "load_stage", fake.get)
    doc = {"metadata": {"name": "r"}, "spec": {"policy": {"model": "org/m"}, "iterations": 1}}
    path, store = _file(tmp_path, doc), str(tmp_path / "s")
    assert main(["run", path, "--store", store]) == 0
    ran = len(fake.calls)
    capsys.readouterr()
    assert main(["run", path, "--store", store]) == 0
    assert len(fake.calls) == ran  # nothing ran twice
    assert f"resuming the run at file://{store}/default/r: {ran} stage(s) done" in (
        capsys.readouterr().err
    )
    s = open_store(f"file://{store}/default/r")
    s.write_bytes("stray.txt", b"x")
    assert main(["run", path, "--store", store, "--fresh", "--quiet"]) == 0
    assert "deleting what a local run of default/r (started " in capsys.readouterr().err
    assert len(fake.calls) == 2 * ran  # every stage ran again
    assert s.exists(layout.RUN_JSON) and not s.exists("stray.txt")
