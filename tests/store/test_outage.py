"""A store that freezes in the middle of a run: the run ends within `storage.timeoutSeconds` of
the freeze (plus a small margin, never twice the timeout) with exit code 75, one line, and the
stages finished before the freeze kept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes import FakeStages
from selfmoa.cli import main
from selfmoa.stages import runner
from selfmoa.stages.base import StageContext, StageOutput
from selfmoa.store import StoreUnavailable, open_store
from selfmoa.store.s3 import S3Store

TIMEOUT = 6
#: What the run may take past the timeout: the failure path and the process, not a second wait.
MARGIN = 3.0


class FreezingProxy:
    """A TCP proxy in front of an S3 server that, once `freeze()` is called, keeps every
    connection open and reads on, but forwards nothing either way (a store that hung)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.frozen = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.frozen.is_set():
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FreezingProxy]:
    p = FreezingProxy(moto_endpoint)
    yield p
    p.close()


def test_a_store_frozen_mid_run_ends_it_within_the_timeout_with_exit_75(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_bucket: str,
    moto_endpoint: str,
    proxy: FreezingProxy,
) -> None:
    fake = FakeStages({0: 0.5, 1: 0.3})
    froze: list[float] = []

    def stage(name: str) -> Any:
        run = fake.get(name)

        def freezing(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
            if (ctx.iteration, name) == (1, "respond"):
                proxy.freeze()
                froze.append(time.monotonic())
            return dict(run(ctx, out))

        return freezing

    monkeypatch.setattr(runner, "load_stage", stage)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "selfmoa.dev/v1alpha1",
                "kind": "AlignmentRun",
                "metadata": {"name": "frozen"},
                "spec": {
                    "policy": {"model": "org/model"},
                    "iterations": 2,
                    "storage": {
                        "uri": f"s3://{s3_bucket}/runs",
                        "endpoint": proxy.url,
                        "timeoutSeconds": TIMEOUT,
                    },
                },
            }
        )
    )
    code = main(["run", str(path), "--quiet"])
    ended = time.monotonic()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 75, err
    assert froze, "the run never reached the stage that freezes the store"
    took = ended - froze[0]
    assert took <= TIMEOUT + MARGIN, f"{took:.1f}s after the freeze (timeout {TIMEOUT}s)"
    (line,) = err
    assert line.startswith("selfmoa: error: stage respond of iteration 1 failed: StoreUnavailable")
    assert "stopped answering" in line and "retryable" in line
    # What finished before the freeze is there to resume from.
    done = open_store(f"s3://{s3_bucket}/runs/default/frozen", endpoint=moto_endpoint).list("iter-")
    assert "iter-000/evaluate/_manifest.json" in done


def test_after_an_outage_the_store_fails_at_once_then_tries_again(
    aws_env: None, s3_bucket: str, proxy: FreezingProxy
) -> None:
    store = S3Store(f"s3://{s3_bucket}/p", endpoint=proxy.url, timeout=4)
    store.write_bytes("a", b"1")
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read_bytes("a")
    first = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="stopped answering"):
        store.write_bytes("status.json", b"{}")
    assert time.monotonic() - started < 0.5 < first
    # Past the window (the store's timeout) it is asked again: it may have come back.
    assert store.outage.current() is not None
    store.outage.open("expired", -1)
    assert store.outage.current() is None
