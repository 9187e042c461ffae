"""Store faults: a frozen S3 server, a missing bucket, an unreachable endpoint, an unwritable
path. Each is one StoreError line naming the store (never a traceback, never a hang); `selfmoa
run` exits 2 for a store that can't be used as named and 75 for one that stopped answering."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from selfmoa.cli import main
from selfmoa.store import StoreError, open_store
from selfmoa.store.s3 import ATTEMPTS, DEFAULT_TIMEOUT_S, TIMEOUT_ENV, S3Store


class FrozenServer:
    """A loopback HTTP server that answers its first `answers` requests with an empty 200, then
    accepts connections and reads requests but never answers again (a frozen S3 server)."""

    def __init__(self, answers: int = 0) -> None:
        self.answers = answers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while not self.stopped.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head.split(b"\r\n", 1)[0])
                if len(self.requests) <= self.answers:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                # else: read on, answer nothing

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def frozen() -> Iterator[FrozenServer]:
    server = FrozenServer(answers=0)
    yield server
    server.close()


@pytest.fixture
def frozen_after_check() -> Iterator[FrozenServer]:
    # The bucket check (HEAD bucket) is answered; everything after it hangs.
    server = FrozenServer(answers=1)
    yield server
    server.close()


def test_frozen_server_mid_run_fails_within_the_timeout(
    aws_env: None, frozen_after_check: FrozenServer
) -> None:
    store = S3Store("s3://bucket/runs/ns/run", endpoint=frozen_after_check.url, timeout=9)
    assert store.worst_case_seconds() <= 9
    # Load botocore's service model first (seconds, once per process): not part of the wait.
    S3Store("s3://warm/up", endpoint=frozen_after_check.url)._make_client(
        connect=1, read=1, attempts=1
    )
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.write_bytes("iter-001/pairs/pairs.jsonl", b"{}\n")
    elapsed = time.monotonic() - started
    msg = str(info.value)
    assert [r.split()[0] for r in frozen_after_check.requests] == [b"HEAD"] + [b"PUT"] * ATTEMPTS
    # Every attempt waited for its reply; all of them together stayed within the timeout.
    assert 4 < elapsed <= 9 + 1, f"{elapsed:.1f}s"
    assert msg.startswith(f"S3 endpoint {frozen_after_check.url} stopped answering on ")
    assert "s3://bucket/runs/ns/run/iter-001/pairs/pairs.jsonl" in msg
    assert "no reply within 9s" in msg and "\n" not in msg


def test_frozen_server_from_the_start_fails_at_the_bucket_check(
    aws_env: None, frozen: FrozenServer
) -> None:
    store = S3Store("s3://bucket/p", endpoint=frozen.url, timeout=2)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"stopped answering on s3://bucket/p: no reply within 3s"):
        store.exists("run.json")
    assert time.monotonic() - started < 15
    assert len(frozen.requests) == 2  # the check's two attempts, nothing more


def test_default_timeouts_fit_in_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    store = S3Store("s3://bucket/p")
    t = store.timeouts
    assert DEFAULT_TIMEOUT_S == 60
    assert 50 <= store.worst_case_seconds() <= 60
    assert t["read"] >= 15 and t["connect"] <= 10 and t["attempts"] >= 2
    client = store._make_client(connect=t["connect"], read=t["read"], attempts=int(t["attempts"]))
    assert client.meta.config.read_timeout == t["read"]
    assert client.meta.config.connect_timeout == t["connect"]
    assert client.meta.config.retries["total_max_attempts"] == ATTEMPTS


def test_timeout_from_env_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "120")
    assert S3Store("s3://bkt/p").timeout == 120
    assert S3Store("s3://bkt/p").worst_case_seconds() == pytest.approx(120)
    from_arg = open_store("s3://bkt/p", timeout=30)
    assert isinstance(from_arg, S3Store) and from_arg.timeout == 30
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(StoreError, match=f"^{TIMEOUT_ENV}: 'soon' is not a number"):
        S3Store("s3://bkt/p")
    with pytest.raises(StoreError, match="between 0 and 86400"):
        S3Store("s3://bkt/p", timeout=0)


def test_endpoint_without_scheme_is_one_line(aws_env: None) -> None:
    store = S3Store("s3://bucket/p", endpoint="minio:9000")
    with pytest.raises(StoreError, match="S3 endpoint 'minio:9000' is not usable"):
        store.exists("k")


def test_bucket_name_s3_refuses_is_one_line(aws_env: None, moto_endpoint: str) -> None:
    store = S3Store("s3://Bad_Bucket!/p", endpoint=moto_endpoint)
    with pytest.raises(StoreError) as info:
        store.exists("k")
    assert "\n" not in str(info.value) and "Bad_Bucket!" in str(info.value)


# ------------------------------------------------------------------ file://


def test_unwritable_file_store_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = open_store(f"file://{blocker}/store")
    with pytest.raises(StoreError) as info:
        store.write_bytes("default/run/run.json", b"{}")
    msg = str(info.value)
    assert msg.startswith(f"cannot write file://{blocker}/store/default/run/run.json: ")
    assert "\n" not in msg
    assert store.exists("default/run/run.json") is False
    with pytest.raises(FileNotFoundError):
        store.read_bytes("default/run/run.json")


def test_store_under_proc_is_one_line() -> None:
    store = open_store("file:///proc/selfmoa-no-such/store")
    with pytest.raises(StoreError, match=r"^cannot write file:///proc/selfmoa-no-such/store/k: "):
        store.write_bytes("k", b"x")


def test_read_only_file_is_one_line(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 's'}")
    store.write_bytes("d/k", b"x")
    (tmp_path / "s" / "d").chmod(0o500)
    try:
        import os

        if os.geteuid() == 0:
            pytest.skip("root writes through folder permissions")
        with pytest.raises(StoreError, match="Permission denied"):
            store.write_bytes("d/k2", b"x")
    finally:
        (tmp_path / "s" / "d").chmod(0o700)


# ------------------------------------------------------------------ selfmoa run


def _run_file(tmp_path: Path, storage: dict[str, object]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "selfmoa.dev/v1alpha1",
                "kind": "AlignmentRun",
                "metadata": {"name": "faults"},
                "spec": {"policy": {"model": "selfmoa/tiny"}, "storage": storage},
            }
        )
    )
    return path


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("selfmoa: error: ")


def test_run_with_a_missing_bucket_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], aws_env: None, moto_endpoint: str
) -> None:
    path = _run_file(tmp_path, {"uri": "s3://no-such-bucket-x/runs", "endpoint": moto_endpoint})
    line = _refused(capsys, ["run", str(path), "--quiet"])
    assert line.startswith("bucket no-such-bucket-x does not exist")


def test_run_with_an_unreachable_endpoint_exits_75(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], aws_env: None
) -> None:
    # Nobody answering is an outage, not bad input: a script may retry it.
    path = _run_file(tmp_path, {"uri": "s3://bucket/runs", "endpoint": "http://127.0.0.1:1"})
    started = time.monotonic()
    line = _refused(capsys, ["run", str(path), "--quiet"], code=75)
    assert time.monotonic() - started < 30
    assert line.startswith("cannot reach S3 endpoint http://127.0.0.1:1: ")


def test_run_with_an_unwritable_store_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = _run_file(tmp_path, {"uri": "file://./runs"})
    line = _refused(capsys, ["run", str(path), "--store", str(blocker / "store"), "--quiet"])
    assert line.startswith(f"cannot write file://{blocker}/store/default/faults/")
