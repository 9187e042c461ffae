"""Artifact stores: `open_store("file://...")` or `open_store("s3://bucket/prefix", endpoint=...)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfmoa.store.base import (
    BadKeyError,
    PrefixedStore,
    Store,
    StoreError,
    StoreUnavailable,
    check_key,
    iter_jsonl,
)

if TYPE_CHECKING:
    from selfmoa.api.spec import StorageSpec


def open_store(
    uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    timeout: float | None = None,
    credentials: tuple[str, str] | None = None,
) -> Store:
    """The store for `uri` (`file://PATH`, a bare path, or `s3://BUCKET/PREFIX`).

    `timeout` (S3 only; pass `spec.storage.timeout_seconds`): seconds an operation may wait on an
    endpoint that stopped answering, retries included; None: SELFMOA_STORE_TIMEOUT_SECONDS or 60.
    """
    if uri.startswith("s3://"):
        from selfmoa.store.s3 import S3Store  # boto3 is an optional extra

        return S3Store(
            uri, endpoint=endpoint, region=region, timeout=timeout, credentials=credentials
        )
    from selfmoa.store.file import FileStore

    return FileStore(uri)


def open_store_for(
    uri: str, storage: StorageSpec, credentials: tuple[str, str] | None = None
) -> Store:
    """The store at `uri` with a run's storage settings (endpoint, region, timeout)."""
    return open_store(
        uri,
        endpoint=storage.endpoint,
        region=storage.region,
        timeout=storage.timeout_seconds,
        credentials=credentials,
    )


__all__ = [
    "BadKeyError",
    "PrefixedStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "check_key",
    "iter_jsonl",
    "open_store",
    "open_store_for",
]
