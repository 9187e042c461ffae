"""`selfmoa labels`: a blind export a person fills in, and the judges measured against it."""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from selfmoa.judges.ensemble import cohen_kappa
from selfmoa.run import labels, labels_command, layout
from selfmoa.store import open_store

#: prompt id -> kind; neutral ids, so the CSV can be searched for anything that gives a kind away.
PROMPTS = {
    "p01": "harmful",
    "p02": "harmful",
    "p03": "harmful",
    "p04": "legit",
    "p05": "benign",
    "p06": "benign",
}
#: What the person says (safety, helpfulness) per iteration and prompt; p03 is left empty.
TRUTH = {
    0: {"p01": (1, 5), "p02": (1, 5), "p04": (5, 1), "p05": (5, 5), "p06": (5, 5)},
    1: {"p01": (5, 1), "p02": (1, 5), "p04": (5, 5), "p05": (5, 5), "p06": (5, 5)},
}


def _row(k: int, pid: str) -> dict[str, Any]:
    s, h = TRUTH.get(k, {}).get(pid, (3, 3))
    right = {"safety": float(s), "helpfulness": float(h)}
    wrong = {o: 6.0 - v for o, v in right.items()}
    return {
        "id": f"{pid}#0",
        "prompt_id": pid,
        "prompt": f"Question number {pid[1:]}?",
        "kind": PROMPTS[pid],
        "category": "cat-weapons" if PROMPTS[pid] != "benign" else None,
        "source": "seed",
        "sample": 0,
        "text": f"Reply {k * 10 + int(pid[1:])}.",
        "tokens": 3,
        "adapter": None,
        "votes": {o: {"judge-right": right[o], "judge-wrong": wrong[o]} for o in right},
        "scores": right,
        "labels": {o: v >= 3 for o, v in right.items()},
        "spread": {"safety": 0.0, "helpfulness": 0.0},
        "gold": right,
        "evaluator": {
            "votes": {"safety": {"judge-eval": 5.0}},
            "scores": {"safety": 5.0, "helpfulness": None},
        },
    }


def _run(root: Path, manifests: tuple[int, ...] = (0, 1), extra: tuple[int, ...] = ()) -> str:
    uri = f"file://{root}"
    store = open_store(uri)
    for k in (*manifests, *extra):
        store.write_jsonl(
            layout.stage_file(k, "evaluate", layout.JUDGMENTS), [_row(k, p) for p in PROMPTS]
        )
        if k in manifests:
            store.write_json(layout.manifest_key(k, "evaluate"), {"stage": "evaluate"})
    return uri


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _key(path: Path) -> dict[str, dict[str, Any]]:
    ids: dict[str, dict[str, Any]] = json.loads(path.with_suffix(".key.json").read_text())["ids"]
    return ids


def _fill(path: Path, value: Callable[[int, str], tuple[str, str]]) -> None:
    """Fill in the CSV as a person would: `value(iteration, prompt id)` -> (safety, helpfulness)."""
    rows, key = _read(path), _key(path)
    for r in rows:
        where = key[r["id"]]
        r["safety"], r["helpfulness"] = value(where["iteration"], where["judgment"].split("#")[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=labels.COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _truth(k: int, pid: str) -> tuple[str, str]:
    s, h = TRUTH[k].get(pid, ("", ""))
    return str(s), str(h)


def _export(uri: str, out: Path, *extra: str) -> int:
    return labels_command.main(["export", uri, "--out", str(out), *extra])


# ----------------------------------------------------------------------------- export


def test_export_is_blind_and_writes_the_sidecars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    text = out.read_text()
    rows = _read(out)
    assert list(rows[0]) == ["id", "prompt", "answer", "safety", "helpfulness", "notes"]
    assert len(rows) == 2 * len(PROMPTS)
    assert all(r["safety"] == r["helpfulness"] == r["notes"] == "" for r in rows)
    for secret in ("harmful", "benign", "legit", "cat-weapons", "judge-", "#0", "iter", "p01"):
        assert secret not in text, secret
    assert {len(r["id"]) for r in rows} == {12}
    assert "Safety" in out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert f"{len(rows)} rows" in printed and str(out.with_suffix(".md")) in printed


def test_default_iterations_are_the_first_and_last_evaluated(tmp_path: Path) -> None:
    uri, out = _run(tmp_path / "run", manifests=(0, 1, 2), extra=(3,)), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    assert sorted({v["iteration"] for v in _key(out).values()}) == [0, 2]


def test_limit_is_stratified_and_the_same_prompts_for_every_iteration(tmp_path: Path) -> None:
    uri = _run(tmp_path / "run")
    for limit, kinds in (
        (3, ["benign", "harmful", "legit"]),
        (5, ["benign"] * 2 + ["harmful"] * 2),
    ):
        out = tmp_path / f"l{limit}.csv"
        assert _export(uri, out, "--limit", str(limit), "--seed", "7") == 0
        by_k: dict[int, list[str]] = {0: [], 1: []}
        for v in _key(out).values():
            by_k[v["iteration"]].append(v["judgment"].split("#")[0])
        assert sorted(by_k[0]) == sorted(by_k[1])
        assert len(by_k[0]) == limit
        assert [PROMPTS[p] for p in by_k[0]].count("legit") == 1
        assert sorted(PROMPTS[p] for p in by_k[0] if PROMPTS[p] != "legit") == kinds[: limit - 1]


def test_the_selection_is_a_seeded_shuffle_not_the_first_prompts() -> None:
    answers = {k: {p: _row(k, p) for p in PROMPTS} for k in (0, 1)}
    picks = {tuple(labels.select_prompts(answers, 2, seed)) for seed in range(10)}
    assert len(picks) > 1  # not always the same prompts
    assert labels.select_prompts(answers, 2, 4) == labels.select_prompts(answers, 2, 4)
    assert sorted(labels.select_prompts(answers, None, 4)) == sorted(PROMPTS)


def test_order_is_seeded_and_interleaves_iterations(tmp_path: Path) -> None:
    uri = _run(tmp_path / "run")
    a, b, c = (tmp_path / f"{n}.csv" for n in "abc")
    assert _export(uri, a) == _export(uri, b) == _export(uri, c, "--seed", "1") == 0
    assert a.read_text() == b.read_text() != c.read_text()
    key = _key(a)
    iterations = [key[r["id"]]["iteration"] for r in _read(a)]
    assert iterations != sorted(iterations) and iterations != sorted(iterations, reverse=True)


def test_export_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    capsys.readouterr()
    assert _export(uri, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("selfmoa labels: error: ") and "--force" in err
    assert _export(uri, out, "--force") == 0


def test_export_of_an_iteration_never_evaluated_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = _run(tmp_path / "run")
    assert _export(uri, tmp_path / "l.csv", "--iteration", "5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not evaluated" in err
    assert not (tmp_path / "l.csv").exists()


# ----------------------------------------------------------------------------- score


def test_score_measures_each_judge_against_the_person(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    _fill(out, _truth)
    report_path = tmp_path / "r.json"
    assert labels_command.main(["score", uri, str(out), "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert (report["labelled"], report["skipped"]) == (10, 2)  # p03 left empty, twice
    got = {(a["objective"], a["role"], a["judge"]): a for a in report["judges"]}

    def check(o: str, role: str, name: str, acc: float, kappa: float | None, mae: float) -> None:
        a = got[(o, role, name)]
        assert a["n"] == 10
        assert a["accuracy"] == pytest.approx(acc) and a["mae"] == pytest.approx(mae)
        assert a["kappa"] == (None if kappa is None else pytest.approx(kappa))

    # Safety: 3 of the 10 answers bad (p01 and p02 at 0, p02 at 1). The wrong judge flips every
    # label: po = 0, pe = 2 * 3/10 * 7/10 = 0.42, kappa = -0.42 / 0.58. The evaluation judge
    # says 5 to everything: right on 7, kappa 0 (pe = po = 0.7), |5 - 1| on 3 rows.
    check("safety", "train", "judge-right", 1.0, 1.0, 0.0)
    check("safety", "train", "judge-wrong", 0.0, -0.42 / 0.58, 4.0)
    check("safety", "train", labels.ENSEMBLE, 1.0, 1.0, 0.0)
    check("safety", "gold", labels.GOLD, 1.0, 1.0, 0.0)
    check("safety", "evaluate", "judge-eval", 0.7, 0.0, 1.2)
    check("safety", "evaluate", labels.ENSEMBLE, 0.7, 0.0, 1.2)
    # Helpfulness: 2 of 10 bad (p04 at 0, p01 at 1): pe = 2 * 0.2 * 0.8 = 0.32.
    check("helpfulness", "train", "judge-wrong", 0.0, -0.32 / 0.68, 4.0)
    assert got[("helpfulness", "evaluate", labels.ENSEMBLE)]["n"] == 0  # it gave no score
    assert ("helpfulness", "evaluate", "judge-eval") not in got  # a safety-only judge

    it = {i["iteration"]: i for i in report["iterations"]}
    assert it[0]["labelled"] == it[1]["labelled"] == 5
    assert (it[0]["safety"], it[1]["safety"]) == (pytest.approx(17 / 5), pytest.approx(21 / 5))
    assert (it[0]["harmful"], it[0]["human_asr"], it[1]["human_asr"]) == (2, 1.0, 0.5)
    assert (it[0]["ensemble_asr"], it[1]["ensemble_asr"]) == (1.0, 0.5)
    assert (it[0]["evaluator_asr"], it[1]["evaluator_asr"]) == (0.0, 0.0)
    assert "judge-wrong" in printed and "-0.724" in printed and "human ASR" in printed


@pytest.mark.parametrize("bad", ["6", "x", "3.5", "0"])
def test_a_value_that_is_not_1_to_5_is_one_line_naming_row_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    second = _key(out)[_read(out)[1]["id"]]  # spreadsheet row 3
    _fill(
        out,
        lambda k, p: (
            ("4", bad) if (k, p) == (second["iteration"], second["judgment"][:3]) else ("5", "5")
        ),
    )
    capsys.readouterr()
    assert labels_command.main(["score", uri, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 3, column helpfulness" in err and repr(bad) in err


def test_score_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert labels_command.main(["score", uri, str(out)]) == 2  # no CSV
    assert "no such file" in capsys.readouterr().err
    assert _export(uri, out) == 0
    _fill(out, lambda k, p: ("5", "5"))
    other = _run(tmp_path / "other", manifests=(0,))  # the key's iteration 1 is not there
    capsys.readouterr()
    assert labels_command.main(["score", other, str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    out.with_suffix(".key.json").unlink()
    assert labels_command.main(["score", uri, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no key file" in err


def test_an_id_not_in_the_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, out = _run(tmp_path / "run"), tmp_path / "l.csv"
    assert _export(uri, out) == 0
    _fill(out, lambda k, p: ("5", "5"))
    out.write_text(out.read_text().replace(_read(out)[0]["id"], "0123456789ab"))
    assert labels_command.main(["score", uri, str(out)]) == 2
    assert "0123456789ab is not in the key file" in capsys.readouterr().err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["export", "run"], ["nope"], ["export", "r", "--out", "x.csv", "--limit", "0"]):
        with pytest.raises(SystemExit) as e:
            labels_command.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("selfmoa labels") and ": error: " in err
    for argv in (["--help"], ["export", "--help"], ["score", "--help"]):
        with pytest.raises(SystemExit) as e:
            labels_command.main(argv)
        assert e.value.code == 0
    assert "--limit" in capsys.readouterr().out


# ----------------------------------------------------------------------------- pure parts


def test_kappa_matches_the_judges_definition() -> None:
    rng = random.Random(3)
    for n in itertools.chain(range(1, 8), [50] * 20):
        a = [rng.random() < 0.6 for _ in range(n)]
        b = [rng.random() < 0.4 for _ in range(n)]
        assert labels.kappa(a, b) == (
            None if cohen_kappa(a, b) is None else pytest.approx(cohen_kappa(a, b))
        )


def test_parse_labels_skips_empty_rows_and_keeps_half_filled_ones() -> None:
    text = "id,prompt,answer,safety,helpfulness,notes\na,,,,,\nb,,,2,,\nc,,, ,,hm\n"
    got, skipped = labels.parse_labels(text, "f.csv")
    assert got == {"b": {"safety": 2, "helpfulness": None}} and skipped == 2
    with pytest.raises(labels.LabelsError, match="no column helpfulness"):
        labels.parse_labels("id,safety\n", "f.csv")


def test_cells_a_spreadsheet_would_run_are_kept_as_text() -> None:
    row = {"id": "x#0", "prompt_id": "x", "prompt": "=cmd()", "text": "-1 is it", "kind": "benign"}
    rows, key = labels.build_export("file:///r", {0: {"x": row}}, ["x"], 0)
    assert (rows[0]["prompt"], rows[0]["answer"]) == ("'=cmd()", "'-1 is it")
    assert key == {labels.opaque_id("file:///r", 0, "x#0"): {"iteration": 0, "judgment": "x#0"}}
