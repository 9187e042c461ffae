"""Micro-batching for `selfmoa serve`: many HTTP requests, few engine calls.

An in-process engine is far faster per sequence on a batch than one sequence at a time (the same
reason vLLM batches). HTTP handler threads only enqueue; a single worker thread takes up to
`max_batch` queued conversations, waiting at most `max_wait` seconds for more after the first,
groups them by identical sampling parameters and adapter, and calls `engine.chat` once per
group. One worker also means the engine is never called concurrently.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from selfmoa.engines.base import Conversation, Engine, Generation, SamplingParams


@dataclass
class ServerStats:
    #: Generation requests received (faulty ones included).
    requests: int = 0
    #: Calls of `engine.chat`, and the number of conversations in each.
    engine_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Job:
    """Conversations from one HTTP request, waiting for the batch worker."""

    conversations: list[Conversation]
    params: SamplingParams
    adapter: str | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[list[Generation]] | None = None
    error: str | None = None


class MicroBatcher:
    """The queue and the worker thread in front of one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int,
        max_wait: float,
        stats: ServerStats,
        stats_lock: threading.Lock,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._stats = stats
        self._stats_lock = stats_lock
        self._queue: queue.Queue[_Job | None] = queue.Queue()

    def thread(self) -> threading.Thread:
        """The worker (not started); it ends after `close`."""
        return threading.Thread(target=self._worker, name="openai-server-batcher", daemon=True)

    def close(self) -> None:
        """Ask the worker to stop after the batch it is on."""
        self._queue.put(None)

    def fail_pending(self, reason: str) -> None:
        """Requests still queued get an error rather than hanging their handler threads."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.error = reason
                job.done.set()

    def submit(
        self, conversations: list[Conversation], params: SamplingParams, adapter: str | None
    ) -> list[list[Generation]]:
        """Queue conversations for the batch worker and wait for their generations."""
        job = _Job(conversations, params, adapter)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None or job.result is None:
            raise RuntimeError(job.error or "no result")
        return job.result

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, size = [first], len(first.conversations)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            size += len(job.conversations)
        return batch, False

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            groups: dict[tuple[SamplingParams, str | None], list[_Job]] = {}
            for job in batch:
                groups.setdefault((job.params, job.adapter), []).append(job)
            for (params, adapter), jobs in groups.items():
                self._run_group(params, adapter, jobs)
            if stop:
                return

    def _run_group(self, params: SamplingParams, adapter: str | None, jobs: list[_Job]) -> None:
        conversations = [c for job in jobs for c in job.conversations]
        try:
            results = self.engine.chat(conversations, params, adapter=adapter)
            if len(results) != len(conversations):
                raise RuntimeError(
                    f"engine returned {len(results)} results for {len(conversations)} conversations"
                )
        except Exception as e:  # any engine failure becomes an HTTP 500 for these requests
            for job in jobs:
                job.error = f"{type(e).__name__}: {e}"
                job.done.set()
            return
        finally:
            with self._stats_lock:
                self._stats.engine_calls += 1
                self._stats.batch_sizes.append(len(conversations))
        i = 0
        for job in jobs:
            job.result = results[i : i + len(job.conversations)]
            i += len(job.conversations)
            job.done.set()
