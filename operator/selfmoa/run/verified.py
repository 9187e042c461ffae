"""A stored adapter, read only as its stage's manifest lists it: every file checked by sha256.

One rule for everyone who needs a local copy of an adapter the run stored (a stage continuing
from its parent, an in-process engine, the adapter agent beside a server, the export): the
stage's `_manifest.json` (written last) lists each file with its sha256; a file that is missing,
not listed, or changed since is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from selfmoa.run import layout
from selfmoa.store import BadKeyError, Store, check_key
from selfmoa.store.scratch import filled_in_place


class Unverified(RuntimeError):
    """The adapter can't be trusted as stored; `permanent`: asking again won't change that (a
    stage that never finished may still finish: that one is not permanent)."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


def manifest_key_of(key: str) -> tuple[str, str]:
    """(the stage's manifest key, the adapter's folder inside the stage) for an adapter key such
    as `iter-003/train/adapter`."""
    stage_dir, _, leaf = key.rstrip("/").rpartition("/")
    if not stage_dir or not leaf:
        raise ValueError(f"adapter key {key!r}: expected <stage directory>/<adapter folder>")
    return f"{stage_dir}/{layout.MANIFEST}", leaf


def listed_files(manifest: Any, leaf: str) -> dict[str, dict[str, Any]]:
    """The adapter's files as its stage manifest lists them: name inside the adapter -> entry
    (`sha256`, `bytes`)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    head = f"{leaf}/"
    return {
        name[len(head) :]: entry
        for name, entry in (files or {}).items()
        if isinstance(name, str)
        and name.startswith(head)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
    }


def listing(store: Store, key: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(manifest key, the adapter's listed files) of the adapter stored at `key`."""
    try:
        mkey, leaf = manifest_key_of(key)
    except ValueError as e:
        raise Unverified(str(e)) from None
    try:
        manifest = store.read_json(mkey)
    except FileNotFoundError:
        raise Unverified(
            f"{store.uri}/{mkey}: missing: the stage never finished, so its adapter can't be "
            "trusted",
            permanent=False,
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Unverified(f"{store.uri}/{mkey}: not valid JSON") from None
    files = listed_files(manifest, leaf)
    if "adapter_config.json" not in files:
        raise Unverified(f"{store.uri}/{mkey}: lists no {leaf}/adapter_config.json")
    return mkey, files


def read_listed(
    store: Store, key: str, mkey: str, files: Mapping[str, Mapping[str, Any]]
) -> Iterator[tuple[str, bytes, str]]:
    """(name inside the adapter, its bytes, its sha256) of every listed file, each checked."""
    where = f"{store.uri}/{key}"
    for rel, entry in sorted(files.items()):
        try:
            check_key(rel)
        except BadKeyError as e:
            raise Unverified(f"{mkey}: {e}") from None
        try:
            data = store.read_bytes(f"{key}/{rel}")
        except FileNotFoundError:
            raise Unverified(f"{where}/{rel}: listed in {mkey} but missing") from None
        sha = hashlib.sha256(data).hexdigest()
        if sha != entry.get("sha256"):
            raise Unverified(
                f"{where}/{rel}: sha256 {sha[:12]}… differs from {mkey} "
                f"({str(entry.get('sha256'))[:12]}…): changed after its stage finished"
            )
        yield rel, data, sha


def download(store: Store, key: str, dest: Path) -> Path:
    """`dest`, holding the verified adapter stored at `key` (kept when already there): written
    into a sibling first and renamed into place when whole, so `dest` is never half an adapter."""
    if (dest / "adapter_config.json").exists():
        return dest
    mkey, files = listing(store, key)
    with filled_in_place(dest) as tmp:
        for rel, data, _ in read_listed(store, key, mkey, files):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return dest
