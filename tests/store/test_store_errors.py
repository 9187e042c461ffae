"""Bad input: the store fails fast, with one line that says what is wrong and where."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfmoa.store import StoreError, open_store
from selfmoa.store.s3 import S3Store, parse_s3_uri, resolve_region


def test_unreachable_endpoint_fails_fast(aws_env: None, closed_port: int) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}"
    store = open_store("s3://bucket/prefix", endpoint=endpoint)  # lazy: no I/O yet
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.read_bytes("run.json")
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s to notice a closed port"
    msg = str(info.value)
    assert msg.startswith(f"cannot reach S3 endpoint {endpoint}: ")
    assert "s3://bucket/prefix" in msg
    assert "\n" not in msg


def test_missing_bucket_is_named(aws_env: None, moto_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket-here/runs", endpoint=moto_endpoint)
    ops = [lambda: store.write_bytes("a", b"1"), store.list, lambda: store.exists("a")]
    for op in ops:
        # The check failed, so the next operation checks again (the bucket may appear later).
        with pytest.raises(StoreError, match=r"^bucket no-such-bucket-here does not exist") as info:
            op()
        assert "\n" not in str(info.value)
        assert "s3://no-such-bucket-here/runs" in str(info.value)


def test_no_credentials_is_one_clear_line(
    aws_env: None, moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # Don't wait on the EC2 metadata service that botocore's chain would otherwise try.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    store = S3Store(f"s3://{s3_bucket}/x", endpoint=moto_endpoint)
    with pytest.raises(StoreError, match="no usable S3 credentials for s3://") as info:
        store.exists("k")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_first_use_checks_the_bucket_once(
    aws_env: None, moto_endpoint: str, s3_bucket: str
) -> None:
    store = S3Store(f"s3://{s3_bucket}/p", endpoint=moto_endpoint)
    assert store._client is None  # construction does no I/O
    store.write_bytes("k", b"v")
    client = store._client
    assert client is not None
    assert store.read_bytes("k") == b"v"
    assert store._client is client


def test_file_store_key_escaping_root_is_refused(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'root'}")
    with pytest.raises(StoreError, match="climbs out"):
        store.write_bytes("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()
    with pytest.raises(StoreError, match="climbs out"):
        store.child("run").read_bytes("../../x")


def test_uri_parsing_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_s3_uri("s3://bkt/a/b/") == ("bkt", "a/b")
    assert parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="no bucket"):
        parse_s3_uri("s3:///prefix")
    assert S3Store("s3://bkt/").uri == "s3://bkt"
    assert S3Store("s3://bkt//x/y/").uri == "s3://bkt/x/y"
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert resolve_region(None) == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert resolve_region(None) == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert resolve_region(None) == "eu-central-1"
    assert resolve_region("ap-south-1") == "ap-south-1"


def test_importing_the_store_does_not_import_boto3() -> None:
    code = (
        "import sys, selfmoa.store; s = selfmoa.store.open_store('s3://bkt/p', endpoint='http://x');"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("code", "operation", "expected"),
    [
        ("AccessDenied", "GetObject", r"^access denied to s3://bkt/p/k \(AccessDenied\): check"),
        ("403", "HeadObject", r"^access denied to s3://bkt/p/k \(403\)"),
        ("InvalidAccessKeyId", "PutObject", r"^S3 rejected the credentials for s3://bkt/p/k"),
        ("SignatureDoesNotMatch", "PutObject", r"^S3 rejected the credentials for s3://bkt/p/k"),
        ("NoSuchBucket", "GetObject", r"^bucket bkt does not exist \(store s3://bkt/p"),
        ("SlowDown", "PutObject", r"^S3 error on s3://bkt/p/k: "),
    ],
)
def test_service_errors_become_one_line(code: str, operation: str, expected: str) -> None:
    # The server side of these (IAM policies, rotated keys) isn't emulated by moto without auth
    # mode, so the translation is checked on botocore's own exception type.
    from botocore.exceptions import ClientError

    store = S3Store("s3://bkt/p", endpoint="http://127.0.0.1:1")
    err = ClientError({"Error": {"Code": code, "Message": "multi\nline message"}}, operation)
    with pytest.raises(StoreError, match=expected) as info, store._errors("k"):
        raise err
    assert "\n" not in str(info.value)


def test_missing_key_error_is_file_not_found() -> None:
    from botocore.exceptions import ClientError

    store = S3Store("s3://bkt/p", endpoint="http://127.0.0.1:1")
    with pytest.raises(FileNotFoundError, match="s3://bkt/p/k: not found"), store._errors("k"):
        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
