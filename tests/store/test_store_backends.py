"""One suite, two backends: every test here runs on file:// and on a real S3 API (moto server)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from selfmoa.store import Store

LAYOUT = [
    "a/b/c.txt",
    "a/b/d.txt",
    "a/bc.txt",
    "a/e.txt",
    "iter-000/evaluate/metrics.json",
    "iter-001/pairs/pairs.jsonl",
    "iter-010/pairs/pairs.jsonl",
    "run.json",
]


def _fill(store: Store, keys: list[str]) -> None:
    for k in keys:
        store.write_bytes(k, k.encode())


def test_bytes_round_trip_and_overwrite(store: Store) -> None:
    payload = bytes(range(256)) * 3
    store.write_bytes("x/y.bin", payload)
    assert store.read_bytes("x/y.bin") == payload
    store.write_bytes("x/y.bin", b"second")
    assert store.read_bytes("x/y.bin") == b"second"
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""


def test_json_and_jsonl(store: Store) -> None:
    obj = {"b": [1, 2.5, None], "a": "ünïcode", "nested": {"k": True}}
    store.write_json("m.json", obj)
    assert store.read_json("m.json") == obj
    rows = [{"i": i, "text": f"línea {i}\nwith newline"} for i in range(5)]
    assert store.write_jsonl("r.jsonl", rows) == 5
    assert store.read_jsonl("r.jsonl") == rows
    # One row per line: a reader can stream it.
    assert store.read_bytes("r.jsonl").count(b"\n") == 5
    assert store.write_jsonl("none.jsonl", []) == 0
    assert store.read_jsonl("none.jsonl") == []


def test_exists(store: Store) -> None:
    assert not store.exists("a/b.txt")
    store.write_bytes("a/b.txt", b"1")
    assert store.exists("a/b.txt")
    # A "directory" is not an object.
    assert not store.exists("a")
    assert not store.exists("a/b")


def test_missing_key_is_file_not_found(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.read_bytes("no/such/key.json")
    with pytest.raises(FileNotFoundError):
        store.read_json("nope.json")
    store.write_bytes("dir/file", b"1")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("dir")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", LAYOUT),
        ("a/", ["a/b/c.txt", "a/b/d.txt", "a/bc.txt", "a/e.txt"]),
        ("a/b/", ["a/b/c.txt", "a/b/d.txt"]),
        # Prefixes that end mid-name match like S3: a plain string prefix.
        ("a/b", ["a/b/c.txt", "a/b/d.txt", "a/bc.txt"]),
        ("iter-00", ["iter-000/evaluate/metrics.json", "iter-001/pairs/pairs.jsonl"]),
        ("iter-0", [k for k in LAYOUT if k.startswith("iter-0")]),
        ("iter-001/pa", ["iter-001/pairs/pairs.jsonl"]),
        ("run.json", ["run.json"]),
        ("nothing/", []),
        ("nothing/deeper", []),
        ("zz", []),
    ],
)
def test_list_prefixes(store: Store, prefix: str, expected: list[str]) -> None:
    _fill(store, LAYOUT)
    assert store.list(prefix) == sorted(expected)


def test_list_and_delete_many_keys(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Several list pages and delete batches. S3 caps both at 1000; writing thousands of objects
    # to moto takes seconds, so the S3 store's page and batch sizes are lowered instead.
    import selfmoa.store.s3 as s3

    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 7)
    monkeypatch.setattr(s3, "DELETE_BATCH", 7)
    keys = [f"many/k{i:04d}" for i in range(30)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: store.write_bytes(k, b"."), keys))
    store.write_bytes("other", b"keep")
    assert store.list("many/") == keys
    assert store.list("many/k001") == keys[10:20]
    assert store.delete_prefix("many/") == 30
    assert store.list() == ["other"]


def test_delete_prefix(store: Store) -> None:
    _fill(store, LAYOUT)
    assert store.delete_prefix("a/b/") == 2
    assert store.list("a/") == ["a/bc.txt", "a/e.txt"]
    # Mid-name prefix deletes like S3: every key starting with it.
    assert store.delete_prefix("iter-00") == 2
    assert store.list("iter-") == ["iter-010/pairs/pairs.jsonl"]
    assert store.delete_prefix("nothing/") == 0
    remaining = store.list()
    assert len(remaining) == 4
    assert store.delete_prefix("") == len(remaining)
    assert store.list() == []
    # The store still works after everything was deleted.
    store.write_bytes("again", b"1")
    assert store.list() == ["again"]


def test_upload_download_dir_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": os.urandom(4096),
        "nested/deeper/tok.json": b"{}",
        "nested/readme.md": "über".encode(),
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    keys = store.upload_dir(src, "iter-001/train/adapter/")
    assert sorted(keys) == sorted(f"iter-001/train/adapter/{r}" for r in files)
    dest = store.download_dir("iter-001/train/adapter", tmp_path / "dest")
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files
    with pytest.raises(FileNotFoundError):
        store.download_dir("iter-009/train/adapter", tmp_path / "none")


def test_child_views(store: Store) -> None:
    run = store.child("ns/run-1")
    assert run.uri == store.uri.rstrip("/") + "/ns/run-1"
    run.write_json("run.json", {"x": 1})
    run.write_bytes("iter-001/pairs/pairs.jsonl", b"{}\n")
    assert store.read_json("ns/run-1/run.json") == {"x": 1}
    assert run.list() == ["iter-001/pairs/pairs.jsonl", "run.json"]
    assert run.list("iter-") == ["iter-001/pairs/pairs.jsonl"]
    assert run.exists("run.json") and not run.exists("ns/run-1/run.json")
    it = run.child("iter-001")
    assert it.read_bytes("pairs/pairs.jsonl") == b"{}\n"
    assert it.list() == ["pairs/pairs.jsonl"]
    # A sibling run sharing the name's prefix is not part of this view.
    store.write_bytes("ns/run-10/run.json", b"{}")
    assert run.list() == ["iter-001/pairs/pairs.jsonl", "run.json"]
    assert run.delete_prefix("") == 2
    assert store.list("ns/") == ["ns/run-10/run.json"]
    with pytest.raises(FileNotFoundError):
        run.read_bytes("run.json")


def test_large_object_multipart(make_store, backend: str) -> None:  # type: ignore[no-untyped-def]
    mib = 1024 * 1024
    store: Store = make_store(multipart_threshold=5 * mib, multipart_chunksize=5 * mib)
    data = os.urandom(12 * mib)
    store.write_bytes("big/blob.bin", data)
    got = store.read_bytes("big/blob.bin")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert store.list("big/") == ["big/blob.bin"]
    if backend == "s3":
        from selfmoa.store.s3 import S3Store

        assert isinstance(store, S3Store)
        head = store.client.head_object(Bucket=store.bucket, Key=store._k("big/blob.bin"))
        # A multipart object's ETag is "<md5 of part md5s>-<parts>": 12 MiB / 5 MiB = 3 parts.
        assert head["ETag"].strip('"').endswith("-3")
        # Below the threshold: a single PUT, plain MD5 ETag.
        store.write_bytes("big/small.bin", b"x" * mib)
        head = store.client.head_object(Bucket=store.bucket, Key=store._k("big/small.bin"))
        assert "-" not in head["ETag"]
