"""Fixtures for the store suite: every test on file:// and on S3 (tests/conftest.py's moto
server, a fresh bucket per test)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from selfmoa.store import Store, open_store


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory `(**s3_kwargs) -> Store` rooted at a fresh location on the current backend."""
    if backend == "file":
        return lambda **_: open_store(f"file://{tmp_path / 'store'}")
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("moto_endpoint")

    def make(**kwargs: object) -> Store:
        from selfmoa.store.s3 import S3Store

        return S3Store(f"s3://{bucket}/root/prefix", endpoint=endpoint, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def store(make_store) -> Store:  # type: ignore[no-untyped-def]
    return make_store()  # type: ignore[no-any-return]


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
