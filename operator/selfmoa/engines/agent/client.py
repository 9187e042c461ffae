"""The client side of adapter delivery: ask for an adapter, wait until every replica serves it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from selfmoa.engines.agent.protocol import (
    STALE_AFTER_S,
    DesiredSet,
    ProtocolError,
    Report,
    Wanted,
    desired_key,
    files_digest,
    listed_files,
    manifest_key_of,
    read_desired,
    read_reports,
    replicas_prefix,
    served_name,
    write_desired,
)
from selfmoa.engines.base import AdapterSource, EngineError
from selfmoa.store import Store, StoreError

#: How long `deliver` waits for the replicas by default (an adapter download plus a load).
DEFAULT_TIMEOUT_S = 300.0
#: The first progress line comes after this long; then one every `PROGRESS_EVERY_S`.
QUIET_S = 5.0
PROGRESS_EVERY_S = 15.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def wanted_of(store: Store, key: str, requested: float) -> Wanted:
    """The desired-set entry for the adapter stored at `key`, named after its manifest's files.

    `EngineError` when its stage hasn't finished (no manifest) or the manifest lists no adapter.
    """
    mkey, leaf = manifest_key_of(key)
    try:
        manifest = store.read_json(mkey)
    except FileNotFoundError:
        raise EngineError(
            f"adapter {store.uri}/{key}: its stage has not finished (no {mkey}), so it can't be "
            "served"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EngineError(f"adapter {store.uri}/{key}: {mkey} is not valid JSON") from None
    except StoreError as e:
        raise EngineError(f"adapter {store.uri}/{key}: {e}") from None
    files = listed_files(manifest, leaf)
    if "adapter_config.json" not in files:
        raise EngineError(f"adapter {store.uri}/{key}: {mkey} lists no {leaf}/adapter_config.json")
    digest = files_digest(files)
    return Wanted(served_name(store.uri, key, digest), key, digest, requested)


@dataclass
class AgentDelivery:
    """Puts stored adapters on every serving replica through their adapter agents."""

    #: Replicas that must serve the adapter before `deliver` returns (`spec.serving.replicas`).
    replicas: int = 1
    timeout: float = DEFAULT_TIMEOUT_S
    #: Seconds between looks at the replicas' reports.
    poll: float = 0.5
    stale_after: float = STALE_AFTER_S
    say: Callable[[str], None] = field(default=_stderr)
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("AgentDelivery: replicas must be >= 1")

    def deliver(self, source: AdapterSource, model: str) -> str:
        """Ask for the stored adapter and wait until `replicas` replicas serve it; its name."""
        assert source.key is not None and source.store is not None
        store, key = source.store, source.key
        wanted = wanted_of(store, key, self.clock())
        try:
            desired = read_desired(store, model)
        except ProtocolError as e:
            # Ours to write: a damaged desired set is replaced, not a reason to stop the run.
            self.say(f"adapter agents: {e}; writing a new desired set")
            desired = DesiredSet(model=model)
        except StoreError as e:
            raise EngineError(f"adapter {store.uri}/{key}: {e}") from None
        desired.ask(wanted)
        desired.updated = self.clock()
        try:
            write_desired(store, desired)
        except StoreError as e:
            raise EngineError(f"adapter {store.uri}/{key}: {e}") from None
        self.wait(store, model, wanted)
        return wanted.name

    def wait(self, store: Store, model: str, wanted: Wanted) -> None:
        """Until `replicas` fresh reports list `wanted` as loaded; `EngineError` when a replica
        refuses it for good or the time is up."""
        started = time.monotonic()
        next_line = started + QUIET_S
        where = f"{store.uri}/{replicas_prefix(model)}"
        what = f"adapter {wanted.key} ({wanted.name})"
        while True:
            now = self.clock()
            try:
                reports, problems = read_reports(store, model)
                store_error = ""
            except StoreError as e:
                reports, problems, store_error = [], [], str(e)
            fresh = [r for r in reports if now - r.updated <= self.stale_after]
            have = [r.replica for r in fresh if _serves(r, wanted)]
            if len(have) >= self.replicas:
                if time.monotonic() - started >= QUIET_S:
                    self.say(f"{what}: served by {len(have)} replica(s) ({', '.join(have)})")
                return
            for r in fresh:
                failure = r.failed.get(wanted.name)
                if failure and failure.get("permanent") and failure.get("digest") == wanted.digest:
                    raise EngineError(
                        f"{what}: replica {r.replica} refused it: {failure.get('reason')}"
                    )
            elapsed = time.monotonic() - started
            state = _describe(fresh, reports, have, wanted, self.replicas, problems, store_error)
            if elapsed >= self.timeout:
                raise EngineError(
                    f"{what}: {len(have)}/{self.replicas} serving replica(s) loaded it within "
                    f"{self.timeout:g}s ({state}; reports under {where}, desired set "
                    f"{store.uri}/{desired_key(model)})"
                )
            if time.monotonic() >= next_line:
                self.say(f"{what}: waiting for the adapter agents, {state}")
                next_line = time.monotonic() + PROGRESS_EVERY_S
            time.sleep(self.poll)


def _serves(report: Report, wanted: Wanted) -> bool:
    entry = report.loaded.get(wanted.name)
    return entry is not None and entry.get("digest") == wanted.digest


def _describe(
    fresh: list[Report],
    reports: list[Report],
    have: list[str],
    wanted: Wanted,
    replicas: int,
    problems: list[str],
    store_error: str,
) -> str:
    """Where the replicas stand, in a few words (for progress lines and the timeout error)."""
    if store_error:
        return f"the store: {store_error}"
    parts = [f"{len(have)}/{replicas} replica(s) serve it"]
    if not reports:
        parts.append("no adapter agent has reported (is one running beside each server?)")
    stale = len(reports) - len(fresh)
    if stale:
        parts.append(f"{stale} report(s) older than the stale limit ignored")
    down = [r.replica for r in fresh if not r.server_up]
    if down:
        parts.append(f"server not answering on {', '.join(down)}")
    for r in fresh:
        failure = r.failed.get(wanted.name)
        if failure:
            parts.append(f"{r.replica}: {failure.get('reason')}")
    parts += problems[:2]
    return "; ".join(parts)
