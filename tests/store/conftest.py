"""Fixtures for the store suite: a real S3 API (moto's server on 127.0.0.1) and file:// stores.

The moto server is started once per session; each test gets its own fresh bucket, so tests never
see each other's objects. boto3 itself is never patched: requests go over HTTP to the server.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfmoa.store import Store, open_store

_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and region; no shared config file from the host leaks in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3_bucket(moto_endpoint: str, aws_env: None) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"selfmoa-test-{next(_BUCKETS)}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return name


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
