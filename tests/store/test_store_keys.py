"""No key resolves outside the store's root: traversal, absolute paths, odd characters, symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selfmoa.store import BadKeyError, Store, StoreError, check_key, open_store

BAD_KEYS = [
    "../evil",
    "a/../../evil",
    "../../etc/passwd",
    "a/..",
    "./a",
    "a/./b",
    "/etc/passwd",
    "/abs/key",
    "a\\..\\..\\evil",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a//b",
    "a/b//",
    "//",
    "",
    "a/",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k) for k in BAD_KEYS])
def test_bad_keys_are_refused_on_every_backend(store: Store, key: str, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadKeyError, match=r"^store key "):
        store.write_bytes(key, b"x")
    with pytest.raises(StoreError):  # BadKeyError is a StoreError (and a ValueError)
        store.read_bytes(key)
    with pytest.raises(BadKeyError):
        store.exists(key)
    with pytest.raises(BadKeyError):
        store.child("run").write_bytes(key, b"x")
    # Nothing appeared next to the store.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == [
        n for n in before if n != "store"
    ]
    assert not Path("/etc/passwd.selfmoa").exists()


@pytest.mark.parametrize("prefix", ["../", "/etc/", "a/../../", "a//", "a\x00"])
def test_bad_prefixes_are_refused(store: Store, prefix: str) -> None:
    with pytest.raises(BadKeyError):
        store.list(prefix)
    with pytest.raises(BadKeyError):
        store.delete_prefix(prefix)
    with pytest.raises(BadKeyError):
        store.child(prefix)


def test_good_keys_and_prefixes_pass() -> None:
    for key in ["a", "a/b.json", "iter-000/evaluate/_manifest.json", ".hidden", "a..b", "a b"]:
        assert check_key(key) == key
    for prefix in ["", "a/", "iter-0", "a/b/"]:
        assert check_key(prefix, prefix=True) == prefix
    with pytest.raises(BadKeyError):
        check_key("")
    with pytest.raises(BadKeyError):
        check_key("a/")


def test_bad_key_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_key("../x")


def test_child_of_empty_prefix_is_the_store_itself(store: Store) -> None:
    assert store.child("") is store
    store.child("ns/run").write_bytes("k", b"v")
    assert store.read_bytes("ns/run/k") == b"v"


# ------------------------------------------------------------------ symlinks (file://)


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Store, Path, Path]:
    """A file:// store whose tree holds symlinks to a folder and a file outside it."""
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "run").mkdir(parents=True)
    os.symlink(outside, root / "run" / "escape")
    os.symlink(outside / "secret.txt", root / "run" / "secret.txt")
    os.symlink(outside / "missing.txt", root / "run" / "dangling.txt")
    return open_store(f"file://{root}"), root, outside


def test_symlinked_folder_is_not_written_through(linked: tuple[Store, Path, Path]) -> None:
    store, _, outside = linked
    with pytest.raises(BadKeyError, match="escapes the store"):
        store.write_bytes("run/escape/planted.txt", b"x")
    with pytest.raises(BadKeyError, match="escapes the store"):
        store.child("run").write_bytes("escape/planted.txt", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_symlinked_file_is_not_read_or_written_through(linked: tuple[Store, Path, Path]) -> None:
    store, _, outside = linked
    with pytest.raises(BadKeyError):
        store.read_bytes("run/secret.txt")
    with pytest.raises(BadKeyError):
        store.read_bytes("run/escape/secret.txt")
    with pytest.raises(BadKeyError):
        store.write_bytes("run/secret.txt", b"overwritten")
    # A dangling link to a file outside must not be created through either.
    with pytest.raises(BadKeyError):
        store.write_bytes("run/dangling.txt", b"x")
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert not (outside / "missing.txt").exists()
    with pytest.raises(BadKeyError):
        store.local_path("run/secret.txt")


def test_links_outside_are_not_listed(linked: tuple[Store, Path, Path]) -> None:
    store, _, _ = linked
    store.write_bytes("run/ok.txt", b"fine")
    assert store.list("run/") == ["run/ok.txt"]
    assert store.list() == ["run/ok.txt"]
    assert store.list("run/esc") == []


def test_delete_removes_links_not_their_targets(linked: tuple[Store, Path, Path]) -> None:
    store, root, outside = linked
    store.write_bytes("run/ok.txt", b"fine")
    store.delete_prefix("run/")
    assert not (root / "run").exists()
    assert (outside / "secret.txt").read_bytes() == b"secret"
    store.write_bytes("again/ok.txt", b"x")
    os.symlink(outside, root / "again-link")
    store.delete_prefix("again")
    assert not (root / "again-link").is_symlink()
    assert (outside / "secret.txt").exists()


def test_root_that_is_a_symlink_still_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    store = open_store(f"file://{tmp_path / 'alias'}")
    store.write_bytes("a/b.txt", b"x")
    assert (real / "a" / "b.txt").read_bytes() == b"x"
    assert store.list() == ["a/b.txt"]


def test_symlink_inside_the_store_to_inside_is_fine(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 's'}")
    store.write_bytes("data/x.txt", b"x")
    os.symlink(tmp_path / "s" / "data", tmp_path / "s" / "alias")
    assert store.read_bytes("alias/x.txt") == b"x"


# ------------------------------------------------------------------ downloads


def test_download_refuses_a_listed_key_that_climbs_out(
    s3_bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    from selfmoa.store.s3 import S3Store

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="models/m/config.json", Body=b"{}")
    # S3 keys are plain strings: a hostile bucket can hold one that reads as a path out.
    client.put_object(Bucket=s3_bucket, Key="models/m/../../../../planted.txt", Body=b"x")
    store = S3Store(f"s3://{s3_bucket}/models", endpoint=moto_endpoint)
    dest = tmp_path / "cache" / "m"
    dest.parent.mkdir()
    with pytest.raises(BadKeyError, match="climbs out"):
        store.download_dir("m", dest)
    assert not (tmp_path / "planted.txt").exists()
    assert not any(p.name == "planted.txt" for p in tmp_path.rglob("*"))
    assert not dest.exists()


def test_download_of_the_whole_store(store: Store, tmp_path: Path) -> None:
    store.write_bytes("config.json", b"{}")
    store.write_bytes("sub/w.bin", b"w")
    dest = store.download_dir("", tmp_path / "dl")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/w.bin",
    ]
    keys = store.child("copy").upload_dir(dest, "")
    assert keys == ["config.json", "sub/w.bin"]
