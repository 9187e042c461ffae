"""`selfmoa export` without loading a model: which iteration, the card, the checks, the output.

The run is built by hand (exportutil): iteration 1 is the best accepted one, iteration 2 was
rolled back. Tests that change the run work on a copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from exportutil import BuiltRun, build_run, front_matter

from selfmoa import cli
from selfmoa.export import ExportError, ExportFailed, export_run
from selfmoa.export.card import NA, is_hub_id
from selfmoa.run import layout, planner
from selfmoa.run import state as run_state


@pytest.fixture(scope="session")
def demo_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltRun:
    return build_run(tmp_path_factory.mktemp("export-run") / "store", tiny_model)


@pytest.fixture(scope="session")
def reset_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltRun:
    return build_run(tmp_path_factory.mktemp("export-reset") / "store", tiny_model, reset=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ which iteration


def test_best_is_the_gates_best_accepted_iteration(demo_run: BuiltRun, tmp_path: Path) -> None:
    done = run_state.finished_stages(demo_run.store, demo_run.spec)
    g = planner.gate(demo_run.spec, run_state.read_metrics(demo_run.store, done))
    assert g.best == 1 and g.accepted == {1: True, 2: False}

    result = export_run(demo_run.uri, str(tmp_path / "out"))

    assert result.iteration == g.best and not result.merged
    assert "lowest held-out attack success rate (0.300) among accepted iterations" in result.why
    status_result = planner.result_of(g, run_state.read_metrics(demo_run.store, done))
    assert status_result is not None and result.why == status_result.why
    assert result.adapter == f"{demo_run.uri}/{demo_run.adapter_key(1)}"
    # The weights are iteration 1's, not the last iteration's.
    stored = demo_run.stored_adapter(1) / "adapter_model.safetensors"
    last = demo_run.stored_adapter(2) / "adapter_model.safetensors"
    exported = tmp_path / "out" / "adapter_model.safetensors"
    assert sha(exported) == sha(stored) != sha(last)


def test_forced_iteration_says_the_gate_rejected_it(demo_run: BuiltRun, tmp_path: Path) -> None:
    result = export_run(demo_run.uri, str(tmp_path / "out"), iteration=2)

    assert result.iteration == 2
    assert "--iteration 2" in result.why and "rolled back" in result.why
    assert "best accepted iteration is 1" in result.why
    exported = tmp_path / "out" / "adapter_model.safetensors"
    assert sha(exported) == sha(demo_run.stored_adapter(2) / "adapter_model.safetensors")


def test_iteration_zero_with_a_reset_is_the_reset_adapter(
    reset_run: BuiltRun, tmp_path: Path
) -> None:
    result = export_run(reset_run.uri, str(tmp_path / "out"), iteration=0)

    assert result.iteration == 0 and result.adapter is not None
    assert result.adapter.endswith("iter-000/reset/adapter")
    exported = tmp_path / "out" / "adapter_model.safetensors"
    assert sha(exported) == sha(reset_run.stored_adapter(0, "reset") / "adapter_model.safetensors")


def test_best_can_be_the_starting_point(tiny_model: Path, tmp_path: Path) -> None:
    """No accepted iteration beat the start: without a reset that is the base itself, so an
    adapter export is refused (one line); --merge is how to get it."""
    built = build_run(tmp_path / "store", tiny_model, asr=(0.2, 0.4))

    with pytest.raises(ExportError, match=r"iteration 0 is the base model itself.*--merge"):
        export_run(built.uri, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the folder and its card


def test_adapter_folder_layout_and_manifest(demo_run: BuiltRun, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "demo"
    export_run(demo_run.uri, str(out))

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "_manifest.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "selfmoa/tiny"  # not the trainer's local path
    assert config["r"] == 4
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["iteration"] == 1 and manifest["merged"] is False
    assert set(manifest["files"]) == set(names) - {"_manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha(out / name)
        assert entry["bytes"] == (out / name).stat().st_size
    source = json.loads(demo_run.store.read_bytes(layout.manifest_key(1, "train")))
    assert (
        manifest["adapter_sha256"]["adapter_model.safetensors"]
        == (source["files"]["adapter/adapter_model.safetensors"]["sha256"])
    )
    assert leftovers(out.parent) == []


def test_card_yaml_parses_and_holds_the_table(demo_run: BuiltRun, tmp_path: Path) -> None:
    export_run(demo_run.uri, str(tmp_path / "out"))

    meta, body = front_matter((tmp_path / "out" / "README.md").read_text())

    assert meta["base_model"] == "selfmoa/tiny"
    assert meta["library_name"] == "peft"
    assert {"selfmoa", "safety", "dpo", "lora"} <= set(meta["tags"])
    assert "license" not in meta  # the tiny base has no card to take it from
    rows = {r["iteration"]: r for r in meta["selfmoa"]["evaluation"]}
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["attack_success_rate"] == 0.3 and rows[1]["accepted"] is True
    assert rows[2]["accepted"] is False and rows[2]["pairs"] == 20
    assert meta["selfmoa"]["iteration"] == 1
    # The markdown table: one row per iteration, the chosen one marked.
    table = [line for line in body.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| iteration | from | ASR | safety | helpfulness | over-refusal")
    assert "| **1** (this model) | 0 | 0.300 | 0.700 | 0.500 | 0.100 | 10 | yes |" in body
    assert "| 2 | 1 | 0.500 | 0.500 | 0.500 | 0.200 | 20 | no (rolled back) |" in body
    assert f"| 0 | {NA} | 0.600 |" in body
    # Why, the judges and the training settings.
    assert "This is iteration 1. Why: lowest held-out attack success rate (0.300) among" in body
    assert "| guard | safety | llm | meta-llama/Llama-Guard-3-1B | llama-guard |" in body
    assert f"| refusal | safety | heuristic | {NA} | rubric |" in body
    assert "| beta | 0.25 |" in body and "| learning rate | 0.002 |" in body
    assert "| LoRA r / alpha / dropout | 4 / 8 / 0 |" in body
    assert "from selfmoa.tiny import ensure_base" in body  # how to get the tiny base


def test_license_comes_from_the_bases_card(tiny_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# A base\n")
    built = build_run(tmp_path / "store", tiny_model, model=str(base), asr=(0.5, 0.2))

    export_run(built.uri, str(tmp_path / "out"))

    meta, body = front_matter((tmp_path / "out" / "README.md").read_text())
    assert meta["license"] == "apache-2.0"
    assert "base_model" not in meta  # a local path means nothing on the hub
    assert str(base) in body


def test_hub_ids_are_told_from_paths_and_uris(tmp_path: Path) -> None:
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and is_hub_id("gpt2")
    assert not is_hub_id("selfmoa/tiny")
    assert not is_hub_id("s3://bucket/models/x") and not is_hub_id("/models/x")
    assert not is_hub_id(str(tmp_path))


# ------------------------------------------------------------------ the checks


def test_a_changed_adapter_file_is_refused(
    demo_run: BuiltRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = demo_run.copy(tmp_path / "run")
    weights = run.stored_adapter(1) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    code, out, err = run_cli([run.uri, "--out", str(tmp_path / "out"), "-q"], capsys)

    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "adapter_model.safetensors" in err and "sha256" in err and "refusing" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_missing_adapter_file_is_refused(demo_run: BuiltRun, tmp_path: Path) -> None:
    run = demo_run.copy(tmp_path / "run")
    (run.stored_adapter(1) / "adapter_config.json").unlink()

    with pytest.raises(ExportFailed, match=r"listed in .*_manifest\.json but missing"):
        export_run(run.uri, str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{empty}", "--out", "{out}"], "no run.json"),
        (["{run}", "--out", "{out}", "--iteration", "7"], "iteration 7 has not been evaluated"),
        (["{run}", "--out", "{out}", "--iteration", "-1"], "must be 0 or more"),
        (["http://example.com/run", "--out", "{out}"], "unsupported scheme"),
        (["s3://", "--out", "{out}"], "no bucket"),
        (["{run}", "--out", "ftp://host/x"], "unsupported scheme"),
        (["{run}", "--out", "s3://bucket-only"], "give a prefix inside the bucket"),
        (["{run}", "--out", "{full}"], "not empty (use --force"),
        (["{run}", "--out", "{run}", "--force"], "overlaps the run"),
        (["{run}", "--out", "{run}/exports/m", "--force"], "overlaps the run"),
        (["{run}", "--out", "{store}", "--force"], "overlaps the run"),
        (["{run}"], "required: --out"),
        (["{run}", "--out", "{out}", "--iteration", "two"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    demo_run: BuiltRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    where = {
        "run": demo_run.uri,
        "empty": str(tmp_path / "empty"),
        "out": str(tmp_path / "out"),
        "full": str(tmp_path / "full"),
        "store": str(demo_run.root),
    }
    args = [a.format(**where) for a in argv]

    try:
        code, out, err = run_cli(args, capsys)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
        out, err = capsys.readouterr()

    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("selfmoa export: error: ") and message in err
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert demo_run.store.exists("run.json") and not demo_run.store.list("exports")


def test_help_reaches_the_export_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: selfmoa export RUN_URI --out DIR" in text
    assert "--merge" in text and "--iteration" in text and "--endpoint" in text


def test_cli_prints_progress_and_the_result(
    demo_run: BuiltRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([demo_run.uri, "--out", str(tmp_path / "out")], capsys)

    assert code == 0, err
    assert out.startswith(f"exported iteration 1 (LoRA adapter) to file://{tmp_path / 'out'}: ")
    assert "selfmoa export: verifying the adapter of iteration 1" in err


def test_bare_paths_work_as_the_run_uri(demo_run: BuiltRun, tmp_path: Path) -> None:
    result = export_run(str(demo_run.root / "ns" / "demo"), f"file://{tmp_path / 'out'}")
    assert result.iteration == 1 and (tmp_path / "out" / "adapter_config.json").is_file()


# ------------------------------------------------------------------ whole or not at all


def test_force_replaces_an_existing_export(demo_run: BuiltRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_run(demo_run.uri, str(out), iteration=2)
    (out / "stale.txt").write_text("from before")

    with pytest.raises(ExportError, match="not empty"):
        export_run(demo_run.uri, str(out))
    export_run(demo_run.uri, str(out), force=True)

    assert not (out / "stale.txt").exists()
    assert json.loads((out / "_manifest.json").read_text())["iteration"] == 1
    assert leftovers(tmp_path) == []


def test_an_export_that_fails_midway_leaves_nothing(
    demo_run: BuiltRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import selfmoa.export.core as core

    out = tmp_path / "out"
    export_run(demo_run.uri, str(out), iteration=2)
    before = {p.name: sha(p) for p in out.iterdir()}

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("card writer broke")

    monkeypatch.setattr(core, "model_card", broken)
    with pytest.raises(RuntimeError, match="card writer broke"):
        export_run(demo_run.uri, str(out), force=True)

    # The previous export is untouched, and no staging folder is left next to it.
    assert {p.name: sha(p) for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ s3


def _s3_files(bucket: str, endpoint: str, prefix: str) -> dict[str, bytes]:
    from selfmoa.store import open_store

    store = open_store(f"s3://{bucket}/{prefix}", endpoint=endpoint)
    return {k: store.read_bytes(k) for k in store.list("")}


def test_s3_run_to_s3_output(
    demo_run: BuiltRun, tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    from selfmoa.store import open_store

    runs = open_store(f"s3://{s3_bucket}/runs", endpoint=moto_endpoint)
    runs.upload_dir(demo_run.root, "")
    run_uri = f"s3://{s3_bucket}/runs/ns/demo"
    said: list[str] = []

    result = export_run(
        run_uri,
        f"s3://{s3_bucket}/models/demo",
        endpoint=moto_endpoint,
        progress=said.append,
    )

    assert result.iteration == 1 and result.out == f"s3://{s3_bucket}/models/demo"
    files = _s3_files(s3_bucket, moto_endpoint, "models/demo")
    assert sorted(files) == [
        "README.md",
        "_manifest.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    manifest = json.loads(files["_manifest.json"])
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"]
    stored = demo_run.stored_adapter(1) / "adapter_model.safetensors"
    assert files["adapter_model.safetensors"] == stored.read_bytes()
    assert any(s.startswith("uploading adapter_model.safetensors") for s in said)
    assert said[-1].startswith("uploading _manifest.json")  # the manifest goes last

    with pytest.raises(ExportError, match="not empty"):
        export_run(run_uri, f"s3://{s3_bucket}/models/demo", endpoint=moto_endpoint)
    export_run(
        run_uri, f"s3://{s3_bucket}/models/demo", endpoint=moto_endpoint, force=True, iteration=2
    )
    again = _s3_files(s3_bucket, moto_endpoint, "models/demo")
    assert json.loads(again["_manifest.json"])["iteration"] == 2


def test_failed_upload_leaves_no_manifest(
    demo_run: BuiltRun,
    tmp_path: Path,
    s3_bucket: str,
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selfmoa.store import StoreError
    from selfmoa.store.s3 import S3Store

    out = f"s3://{s3_bucket}/models/demo"
    export_run(demo_run.uri, out, endpoint=moto_endpoint, iteration=2)
    real = S3Store.write_bytes
    calls: list[str] = []

    def flaky(self: S3Store, key: str, data: bytes) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise StoreError("S3 error on models/demo: connection reset")
        real(self, key, data)

    monkeypatch.setattr(S3Store, "write_bytes", flaky)
    with pytest.raises(ExportFailed, match=r"upload to .* failed.*no _manifest\.json"):
        export_run(demo_run.uri, out, endpoint=moto_endpoint, force=True)

    left = _s3_files(s3_bucket, moto_endpoint, "models/demo")
    assert "_manifest.json" not in left  # neither the old one nor a new one
    assert len(left) == 1  # the one file that made it before the failure
