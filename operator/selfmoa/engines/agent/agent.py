"""The agent beside one server: makes the server's adapters follow the run's desired set.

One pass (`AdapterAgent.step`) reads the desired set and the server's `/v1/models`, loads what is
wanted and missing (downloaded and verified first), unloads and deletes what is no longer wanted,
and writes this replica's report. `run` repeats it every `interval` seconds until stopped.

Only adapters the agent manages are ever unloaded: those whose directory lies under its own
`directory` (vLLM reports the path as the model card's `root`) or that it loaded itself; adapters
loaded some other way stay. The agent owns `directory`: half downloads left by a killed agent
(`.partial-*`) are removed when it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from selfmoa.engines.agent.protocol import (
    HEARTBEAT_S,
    SYNCED,
    DesiredSet,
    ProtocolError,
    Report,
    Wanted,
    files_digest,
    read_desired,
    report_key,
    write_report,
)
from selfmoa.engines.base import EngineError
from selfmoa.engines.openai_engine import OpenAIEngine
from selfmoa.run import verified
from selfmoa.store import Store, StoreError

#: Inside a verified adapter directory: the digest it was verified against.
VERIFIED: Final = ".selfmoa-verified"
PARTIAL: Final = ".partial-"
#: Backoff after a failure: doubling from the poll interval up to this.
MAX_BACKOFF_S: Final = 60.0


class Refused(Exception):
    """The adapter can't be loaded as stored; `permanent`: retrying can't change that."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class _Retry:
    at: float
    attempts: int


class AdapterAgent:
    """Keeps one server's adapters equal to the desired set of `model` in the run's `store`."""

    def __init__(
        self,
        store: Store,
        *,
        server: str,
        directory: Path,
        replica: str,
        model: str,
        interval: float = 2.0,
        heartbeat: float = HEARTBEAT_S,
        http_timeout: float = 120.0,
        say: Callable[[str], None] = _stderr,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.directory = directory
        self.model = model
        self.interval = interval
        self.heartbeat = heartbeat
        self.say = say
        self.clock = clock
        report_key(model, replica)  # a bad replica id fails here, before anything runs
        self.server = OpenAIEngine(
            server, model=model, max_concurrency=2, timeout=http_timeout, max_retries=2
        )
        self.report = Report(replica=replica, model=model, server=self.server.base_url)
        self.desired: DesiredSet | None = None
        #: Adapters this agent loaded (they are unloaded when no longer wanted).
        self.mine: set[str] = set()
        #: Successful load requests (a second `step` with nothing new makes none).
        self.loads = 0
        self._retry: dict[str, _Retry] = {}
        self._written: dict[str, Any] | None = None
        self._written_at = 0.0
        self._said: str | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / SYNCED).unlink(missing_ok=True)
        for p in self.directory.glob(f"{PARTIAL}*"):
            shutil.rmtree(p, ignore_errors=True)

    @property
    def replica(self) -> str:
        return self.report.replica

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """`step` every `interval` seconds until `stop` is set; then the report is withdrawn."""
        self.say(
            f"adapter-agent {self.replica}: serving {self.model} at {self.server.base_url}, "
            f"adapters from {self.store.uri}, files in {self.directory}"
        )
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception as e:  # one bad pass must not end the agent
                    self._once(
                        f"adapter-agent {self.replica}: pass failed: {type(e).__name__}: {e}"
                    )
                stop.wait(self.interval)
        finally:
            self.close()

    def close(self) -> None:
        """Withdraw this replica's report (a stopped replica serves nothing) and let go."""
        with contextlib.suppress(StoreError, OSError):
            self.store.delete_prefix(report_key(self.model, self.replica))
        self.server.close()

    def step(self) -> Report:
        """One reconcile pass; the report as written (or as it would have been)."""
        self._read_desired()
        cards = self._server_adapters()
        now = self.clock()
        report = self.report
        report.server_up = cards is not None
        wanted = list(self.desired.adapters) if self.desired is not None else []
        if cards is None:
            # The server is down or restarting: it holds nothing until it answers again.
            report.loaded = {}
        else:
            loaded = self._load_missing(wanted, cards, now)
            self._unload_unwanted(wanted, cards)
            report.loaded = loaded
            self._sweep_disk({w.name for w in wanted} | set(loaded))
        names = {w.name for w in wanted}
        report.failed = {n: f for n, f in report.failed.items() if n in names}
        report.synced = (
            cards is not None
            and self.desired is not None
            and all(
                w.name in report.loaded or report.failed.get(w.name, {}).get("permanent")
                for w in wanted
            )
        )
        if report.synced:
            (self.directory / SYNCED).touch()
        self._write_report(now)
        return report

    # ------------------------------------------------------------------ reading state

    def _read_desired(self) -> None:
        try:
            self.desired = read_desired(self.store, self.model)
        except (StoreError, ProtocolError) as e:
            # Keep the last desired set read: nothing is unloaded because the store hiccuped.
            self._once(f"adapter-agent {self.replica}: can't read the desired set: {e}")

    def _server_adapters(self) -> dict[str, str] | None:
        """Adapters the server serves: name -> path (its model card's root); None: it's down."""
        try:
            cards = self.server.model_cards()
        except EngineError as e:
            self._once(f"adapter-agent {self.replica}: server not answering: {e}")
            return None
        return {
            str(c.get("id")): str(c.get("root") or "")
            for c in cards
            if c.get("id") != self.model and c.get("parent") is not None
        }

    # ------------------------------------------------------------------ loading

    def _load_missing(
        self, wanted: list[Wanted], cards: dict[str, str], now: float
    ) -> dict[str, dict[str, Any]]:
        loaded: dict[str, dict[str, Any]] = {}
        previous = self.report.loaded
        for w in wanted:
            if w.name in cards:
                at = previous.get(w.name, {}).get("at", now)
                loaded[w.name] = self._entry(w, cards[w.name], at)
                self.report.failed.pop(w.name, None)
                continue
            retry = self._retry.get(w.name)
            if retry is not None and time.monotonic() < retry.at:
                continue
            started = time.monotonic()
            try:
                path = self.fetch(w)
                self.server.load_adapter(w.name, str(path))
            except Refused as e:
                self._failed(w, e.reason, permanent=e.permanent)
                continue
            except (StoreError, EngineError, OSError) as e:
                self._failed(w, f"{type(e).__name__}: {e}", permanent=False)
                continue
            self.loads += 1
            self.mine.add(w.name)
            self._retry.pop(w.name, None)
            self.report.failed.pop(w.name, None)
            loaded[w.name] = self._entry(w, str(path), self.clock())
            self.say(
                f"adapter-agent {self.replica}: loaded {w.name} ({w.key}) in "
                f"{time.monotonic() - started:.1f}s"
            )
        return loaded

    @staticmethod
    def _entry(w: Wanted, path: str, at: float) -> dict[str, Any]:
        return {"key": w.key, "digest": w.digest, "path": path, "at": at}

    def _failed(self, w: Wanted, reason: str, *, permanent: bool) -> None:
        retry = self._retry.get(w.name) or _Retry(0.0, 0)
        retry.attempts += 1
        delay = (
            MAX_BACKOFF_S if permanent else min(MAX_BACKOFF_S, self.interval * 2**retry.attempts)
        )
        retry.at = time.monotonic() + delay
        self._retry[w.name] = retry
        self.report.failed[w.name] = {
            "key": w.key,
            "digest": w.digest,
            "reason": reason,
            "permanent": permanent,
            "attempts": retry.attempts,
            "at": self.clock(),
        }
        kind = "refused" if permanent else f"failed (attempt {retry.attempts}, retry in {delay:g}s)"
        self.say(f"adapter-agent {self.replica}: {w.name} ({w.key}) {kind}: {reason}")

    def fetch(self, w: Wanted) -> Path:
        """A local directory holding the adapter, every file checked against its stage's
        manifest; downloaded once (a directory verified for the same digest is reused)."""
        final = self.directory / w.name
        with contextlib.suppress(OSError):
            if (final / VERIFIED).read_text().strip() == w.digest:
                return final
        try:
            mkey, files = verified.listing(self.store, w.key)
        except verified.Unverified as e:
            raise Refused(str(e), permanent=e.permanent) from None
        if files_digest(files) != w.digest:
            raise Refused(
                f"{mkey} no longer lists the files this adapter was asked for with "
                "(the stage was redone?); ask for it again",
                permanent=True,
            )
        tmp = self.directory / f"{PARTIAL}{w.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            try:
                for rel, data, _ in verified.read_listed(self.store, w.key, mkey, files):
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
            except verified.Unverified as e:
                raise Refused(f"{e}; not loading it", permanent=e.permanent) from None
            (tmp / VERIFIED).write_text(w.digest + "\n")
            # Whole and verified: only now does it get the name the server is handed.
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ unloading

    def _managed(self, name: str, root: str) -> bool:
        if name in self.mine:
            return True
        try:
            Path(root).resolve().relative_to(self.directory.resolve())
        except (ValueError, OSError):
            return False
        return bool(root)

    def _unload_unwanted(self, wanted: list[Wanted], cards: dict[str, str]) -> None:
        names = {w.name for w in wanted}
        for name, root in sorted(cards.items()):
            if name in names or not self._managed(name, root):
                continue
            try:
                self.server.unload_adapter(name)
            except EngineError as e:
                self._once(f"adapter-agent {self.replica}: can't unload {name}: {e}")
                continue
            self.mine.discard(name)
            shutil.rmtree(self.directory / name, ignore_errors=True)
            self.say(f"adapter-agent {self.replica}: unloaded {name} (no longer wanted)")

    def _sweep_disk(self, keep: set[str]) -> None:
        """Adapter directories nobody wants or serves (the pod's disk is small)."""
        for p in self.directory.iterdir():
            if p.name.startswith((".", "~")) or p.name in keep or not p.is_dir():
                continue
            if (p / VERIFIED).exists():
                shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ reporting

    def _write_report(self, now: float) -> None:
        comparable = self.report.comparable()
        if comparable == self._written and now - self._written_at < self.heartbeat:
            return
        self.report.updated = now
        try:
            write_report(self.store, self.report)
        except StoreError as e:
            self._once(f"adapter-agent {self.replica}: can't write the report: {e}")
            return
        self._written, self._written_at = comparable, now

    def _once(self, line: str) -> None:
        """Say a line unless it's the one said last (a store down for an hour is one line)."""
        if line != self._said:
            self.say(line)
            self._said = line
