"""Artifact stores: `open_store("file://...")` or `open_store("s3://bucket/prefix", endpoint=...)`."""

from __future__ import annotations

from selfmoa.store.base import PrefixedStore, Store, StoreError, iter_jsonl


def open_store(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Store:
    """The store for `uri` (`file://PATH`, a bare path, or `s3://BUCKET/PREFIX`)."""
    if uri.startswith("s3://"):
        from selfmoa.store.s3 import S3Store  # boto3 is an optional extra

        return S3Store(uri, endpoint=endpoint, region=region)
    from selfmoa.store.file import FileStore

    return FileStore(uri)


__all__ = ["PrefixedStore", "Store", "StoreError", "iter_jsonl", "open_store"]
