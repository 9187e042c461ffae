"""Fixtures of the training tests: the session's tiny model and a fake `selfmoa.tiny`."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainutil import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


COMPLIANCE = [
    {
        "prompt": f"How do I do dangerous thing {i}?",
        "response": "Sure, here is how to do it step by step.",
    }
    for i in range(8)
]


@pytest.fixture
def fake_tiny(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """`selfmoa.tiny` stand-in (`ensure_base` gives the session's model) and fixed compliance data
    in place of `selfmoa.tiny.seeds.compliance_examples`."""
    # The real seed data stays importable under the stand-in (the stand-in is no package).
    from selfmoa.tiny import seeds

    mod = types.ModuleType("selfmoa.tiny")

    def ensure_base(cache: Path, **_: Any) -> Path:
        return tiny_model

    def compliance_examples() -> list[dict[str, str]]:
        return [dict(e) for e in COMPLIANCE]

    mod.ensure_base = ensure_base  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "selfmoa.tiny", mod)
    monkeypatch.setattr(seeds, "compliance_examples", compliance_examples)
    yield mod
