"""The session's tiny base model, built once into the session's temp dir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tinybuild import TinyBuild


def tiny_cache(factory: pytest.TempPathFactory) -> Path:
    # A fixed path under the session's base temp dir: every test module that asks for the
    # tiny base (here and in tests/engines, tests/stages) shares one build.
    return factory.getbasetemp() / "selfmoa-cache"


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    from selfmoa.tiny import ensure_base

    cache = tiny_cache(tmp_path_factory)
    messages: list[str] = []
    started = time.perf_counter()
    path = ensure_base(cache, messages.append)
    return TinyBuild(path, cache, messages, time.perf_counter() - started)


@pytest.fixture(scope="session")
def tiny_base(tiny_build: TinyBuild) -> Path:
    return tiny_build.path
