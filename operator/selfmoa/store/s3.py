"""`s3://bucket/prefix` store on boto3 (AWS S3, MinIO and other S3-compatible stores).

boto3 is imported here only; `selfmoa.store.open_store` imports this module lazily, so the CLI's
`--help` and the operator never pay for it. The bucket is checked once, on first use, with a
client that has short timeouts and a single retry: a wrong endpoint fails in seconds with one
clear line instead of minutes of botocore back-off.

Every later request has connect/read timeouts and a bounded number of attempts, sized so that an
endpoint that accepts connections and then never answers (a frozen server) fails the operation
within `timeout` seconds (default 60; `spec.storage.timeoutSeconds` or the
SELFMOA_STORE_TIMEOUT_SECONDS environment variable), plus botocore's short back-off between
attempts.

An outage is a `StoreUnavailable` (exit code 75, retryable); a store that can't be used as named
(no such bucket, credentials or access refused) stays a `StoreError` (bad input, exit code 2).
Once an operation has waited out its timeout, the store answers every later operation with the
same outage at once for the next `timeout` seconds: the failure path (writing status.json down)
must not wait on the frozen store a second time.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from selfmoa.api.exits import OutageWindow
from selfmoa.store.base import Store, StoreError, StoreUnavailable, check_key

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client

#: Payloads above this go through a multipart upload (S3 caps a single PUT at 5 GiB; smaller
#: parts also keep memory spikes in botocore's signing/retry buffers bounded).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
#: S3 refuses parts below 5 MiB (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
#: delete_objects takes at most this many keys per call.
DELETE_BATCH = 1000
#: Keys per list_objects_v2 page (S3's maximum; tests lower it to exercise paging cheaply).
LIST_PAGE_SIZE = 1000

#: Seconds one operation may wait on an unresponsive endpoint, retries included.
DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "SELFMOA_STORE_TIMEOUT_SECONDS"
#: Attempts per request (the first one included) once the bucket check has passed.
ATTEMPTS = 3
#: On top of the read timeouts: botocore's back-off between attempts (at most 1 s, then 2 s)...
BACKOFF_S = 3.0
#: ...and its wait for a "100 Continue" before it sends a request body (1 s per attempt).
CONTINUE_S = 1.0

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
_BAD_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
#: Error codes of a store that is up but can't serve now (after botocore's own retries).
_OUTAGE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "500",
        "502",
        "503",
        "504",
    }
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` -> ("bucket", "a/b")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r} (expected s3://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


_LOADER_LOCK = threading.Lock()
_loader: Any = None


def _new_session() -> Any:
    """A boto3 session sharing one botocore data loader: a fresh loader re-reads the service
    models (~80 ms per client, 18 ms with the shared one). Each store still gets its own session,
    so credentials are resolved from the environment as it is when the store is first used."""
    global _loader
    import boto3
    import botocore.session

    with _LOADER_LOCK:
        core = botocore.session.Session()
        if _loader is None:
            _loader = core.get_component("data_loader")
        core.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=core)


def resolve_region(region: str | None) -> str:
    return (
        region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def resolve_timeout(timeout: float | None) -> float:
    """The operation timeout: the argument, else the environment, else the default."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(raw)
        except ValueError:
            raise StoreError(f"{TIMEOUT_ENV}: {raw[:40]!r} is not a number of seconds") from None
    if not (0 < timeout <= 24 * 3600):
        raise StoreError(f"store timeout must be between 0 and 86400 seconds, not {timeout:g}")
    return float(timeout)


class S3Store(Store):
    def __init__(
        self,
        uri: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int | None = None,
        timeout: float | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        #: (access key id, secret key); None: boto3's chain (environment, IRSA, instance role).
        self.credentials = credentials
        try:
            self.bucket, self.prefix = parse_s3_uri(uri)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self.timeout = resolve_timeout(timeout)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint = endpoint or None
        self.region = resolve_region(region)
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = max(
            MIN_PART_SIZE, multipart_chunksize or min(multipart_threshold, MULTIPART_THRESHOLD)
        )
        self._client: S3Client | None = None
        self._session: Any = None
        self._lock = threading.Lock()
        #: After an outage, later operations fail with it at once for `timeout` seconds.
        self.outage = OutageWindow()

    # Connection ---------------------------------------------------------------------------

    def _make_client(self, *, connect: float, read: float, attempts: int) -> S3Client:
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            connect_timeout=connect,
            read_timeout=read,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            # MinIO and most S3-compatible stores don't do virtual-hosted bucket names.
            s3={"addressing_style": "path"} if self.endpoint else {},
        )
        if self._session is None:
            self._session = _new_session()
        try:
            keys: dict[str, str] = {}
            if self.credentials is not None:
                keys = {
                    "aws_access_key_id": self.credentials[0],
                    "aws_secret_access_key": self.credentials[1],
                }
            client: S3Client = self._session.client(
                "s3", endpoint_url=self.endpoint, config=config, **keys
            )
        except ValueError as e:  # botocore: "Invalid endpoint: ..."
            raise StoreError(
                f"S3 endpoint {self.endpoint!r} is not usable: {_one_line(e)}"
            ) from None
        return client

    @property
    def timeouts(self) -> dict[str, float]:
        """Connect and read timeouts and attempts of the working client, sized so that the
        worst case (every attempt waits its full read timeout) stays within `self.timeout`."""
        per_attempt = max(0.5, (self.timeout - BACKOFF_S) / ATTEMPTS - CONTINUE_S)
        return {"connect": min(10.0, per_attempt), "read": per_attempt, "attempts": ATTEMPTS}

    def worst_case_seconds(self) -> float:
        """How long an operation can wait on a frozen endpoint with these timeouts."""
        t = self.timeouts
        return t["attempts"] * (t["read"] + CONTINUE_S) + BACKOFF_S

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or f"https://s3.{self.region}.amazonaws.com"

    @property
    def client(self) -> S3Client:
        """The working client; the bucket is checked the first time it is asked for."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._check_bucket()
                    t = self.timeouts
                    self._client = self._make_client(
                        connect=t["connect"], read=t["read"], attempts=int(t["attempts"])
                    )
        return self._client

    def _check_bucket(self) -> None:
        short = min(5.0, self.timeout / 2)
        probe = self._make_client(connect=min(2.0, short), read=short, attempts=2)
        # Two attempts of `short` seconds and at most 1 s of back-off between them.
        with self._errors(None, waited=2 * short + 1):
            probe.head_bucket(Bucket=self.bucket)

    @contextmanager
    def _errors(self, key: str | None, *, waited: float | None = None) -> Iterator[None]:
        """Turn botocore's exceptions into one clear StoreError line (or FileNotFoundError)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = f"{self.uri}/{key}" if key is not None else self.uri
        down = self.outage.current()
        if down is not None:
            raise StoreUnavailable(down)
        try:
            yield
        except ReadTimeoutError:
            raise self._down(
                f"S3 endpoint {self.endpoint_url} stopped answering on {where}: no reply within "
                f"{waited or self.timeout:g}s (retries included; raise "
                "spec.storage.timeoutSeconds if the store is only slow)"
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise self._down(
                f"cannot reach S3 endpoint {self.endpoint_url}: {_one_line(exc)} (store {self.uri})"
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(
                f"no usable S3 credentials for {self.uri}: {_one_line(exc)}; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role)"
            ) from None
        except ClientError as exc:
            raise self._client_error(exc, key, where) from None
        except ParamValidationError as exc:
            raise StoreError(f"S3 refused the request for {where}: {_one_line(exc)}") from None
        except HTTPClientError as exc:
            # A connection closed or reset mid-request, after botocore's retries.
            raise StoreUnavailable(f"S3 error on {where}: {_one_line(exc)}") from None
        except (BotoCoreError, Boto3Error) as exc:
            # Anything else botocore or s3transfer raise (SSL, a failed multipart upload): still
            # one line naming the store.
            raise StoreError(f"S3 error on {where}: {_one_line(exc)}") from None

    def _client_error(self, exc: ClientError, key: str | None, where: str) -> Exception:
        """The error to raise for an error answer of S3: a missing bucket or key, rejected
        credentials, access denied, an outage, or any other refusal."""
        err: dict[str, Any] = dict(exc.response.get("Error", {}))
        code = str(err.get("Code", ""))
        if code in _MISSING_BUCKET_CODES or (key is None and code in _MISSING_KEY_CODES):
            return StoreError(
                f"bucket {self.bucket} does not exist (store {self.uri}, endpoint "
                f"{self.endpoint_url})"
            )
        if code in _MISSING_KEY_CODES:
            return FileNotFoundError(f"{where}: not found")
        if code in _BAD_CREDENTIAL_CODES:
            return StoreError(
                f"S3 rejected the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY"
            )
        if code in _DENIED_CODES:
            return StoreError(
                f"access denied to {where} ({code}): check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's policy"
            )
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _OUTAGE_CODES or status >= 500:
            return StoreUnavailable(f"S3 error on {where}: {_one_line(exc)}")
        return StoreError(f"S3 error on {where}: {_one_line(exc)}")

    def _down(self, message: str) -> StoreUnavailable:
        """An outage that waited out its timeout: later operations get it at once for a while."""
        self.outage.open(message, self.timeout)
        return StoreUnavailable(message)

    # Keys ---------------------------------------------------------------------------------

    def _k(self, key: str, *, prefix: bool = False) -> str:
        # Same rule as the file store: a key never climbs out of the store's root.
        return self._full(check_key(key, prefix=prefix))

    def _full(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # Store --------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        client = self.client
        with self._errors(key):
            body = client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def write_bytes(self, key: str, data: bytes) -> None:
        client = self.client
        full = self._k(key)
        with self._errors(key):
            if len(data) <= self.multipart_threshold:
                client.put_object(Bucket=self.bucket, Key=full, Body=data)  # one PUT: atomic
                return
            from boto3.s3.transfer import TransferConfig

            # A multipart object only appears on CompleteMultipartUpload; s3transfer aborts the
            # upload on failure, so readers never see part of it either.
            config = TransferConfig(
                multipart_threshold=self.multipart_threshold,
                multipart_chunksize=self.multipart_chunksize,
            )
            client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=config)

    def exists(self, key: str) -> bool:
        client = self.client
        try:
            with self._errors(key):
                client.head_object(Bucket=self.bucket, Key=self._k(key))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        client = self.client
        full = (
            self._k(prefix, prefix=True) if prefix else (f"{self.prefix}/" if self.prefix else "")
        )
        keys: list[str] = []
        with self._errors(prefix):
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            ):
                keys += [self._rel(obj["Key"]) for obj in page.get("Contents", []) if "Key" in obj]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        client = self.client
        with self._errors(prefix):
            for i in range(0, len(keys), DELETE_BATCH):
                batch = keys[i : i + DELETE_BATCH]
                resp = client.delete_objects(
                    Bucket=self.bucket,
                    # Listed keys are the backend's own: deleted as they are, even odd ones.
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
                )
                errors = resp.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StoreError(
                        f"could not delete {len(errors)} object(s) under {self.uri}/{prefix}: "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
        return len(keys)
