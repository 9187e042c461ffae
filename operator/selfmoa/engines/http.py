"""JSON over HTTP with retries, for synchronous callers, on a private event loop.

Why async inside: an OpenAI-compatible server such as vLLM batches whatever requests are in
flight, so throughput comes from keeping up to `max_concurrency` requests open at once, not from
big requests. The stages are synchronous, so the client owns one event loop on a private daemon
thread (created on first use) and `run` submits a coroutine to it and waits. That also makes it
safe to call from a thread whose own event loop is running: the work never runs on the caller's
loop. The `httpx.AsyncClient` lives on that loop for the client's lifetime, so connections are
reused across calls.

Failure policy: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
jitter; a reply the caller's parser rejects (`Retryable`) is a failed attempt too; any other 4xx
fails at once (retrying a bad request can't help). The final error is one line: URL, status,
short body. When the retries end on an outage (no connection, no reply, 5xx) the error is an
`EndpointUnavailable` (exit code 75, retryable), and for the next `timeout` seconds every request
fails with it at once: a stage's failure path must not wait out a dead server once per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from selfmoa.api.exits import OutageWindow, Unavailable
from selfmoa.engines.base import EngineError

T = TypeVar("T")

#: Longest body excerpt quoted in an error message.
_BODY_CHARS = 200
#: Upper bound on one backoff sleep, whatever Retry-After or the exponent says.
_MAX_SLEEP = 30.0


def normalize_base_url(base_url: str) -> str:
    """`http://h:8000`, `http://h:8000/` and `http://h:8000/v1` all name the same server."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def short(text: str) -> str:
    """`text` on one line, cut to an excerpt fit for an error message."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= _BODY_CHARS else one_line[:_BODY_CHARS] + "..."


@dataclass
class Attempt:
    """Why the last attempt failed (for the final error line)."""

    status: int | None = None
    detail: str = ""
    #: The server was down or overloaded (no connection, no reply, 429, 5xx), not the reply bad.
    outage: bool = False

    def describe(self) -> str:
        return f"HTTP {self.status}: {self.detail}" if self.status is not None else self.detail


class HTTPStatusEngineError(EngineError):
    """The server refused a request with a 4xx other than 429 (retrying can't help)."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"POST {url} failed: HTTP {status}: {short(body)}")
        self.status = status
        self.body = body


class EndpointUnavailable(EngineError, Unavailable):
    """The server could not be reached or stopped answering, retries included."""


class Retryable(Exception):
    """This attempt failed in a way another attempt may not (raised by reply parsers too)."""

    def __init__(self, attempt: Attempt, retry_after: float | None = None) -> None:
        super().__init__(attempt.describe())
        self.attempt = attempt
        self.retry_after = retry_after


class RetryingClient:
    """POSTs JSON to one server from synchronous code, many requests in flight."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        max_concurrency: int = 64,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.base_url = normalize_base_url(base_url)
        self.name = name
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self._headers = dict(headers or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        #: After an outage, requests fail with it without trying for `timeout` seconds.
        self.outage = OutageWindow()

    # ------------------------------------------------------------------ event loop plumbing

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"openai-engine-{self.name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop and wait for it."""
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("OpenAIEngine called from its own event loop (e.g. a progress hook)")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C) or failed: don't leave requests running on the loop.
            future.cancel()
            raise

    def semaphore(self) -> asyncio.Semaphore:
        # Client-wide, so that callers in several threads together stay within max_concurrency.
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._sem

    def client(self) -> httpx.AsyncClient:
        # Created on the client's loop (AsyncClient's pool belongs to the loop that uses it).
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency,
                    max_keepalive_connections=self.max_concurrency,
                ),
                headers=self._headers,
            )
        return self._client

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        if self._client is not None:
            client, self._client = self._client, None
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
        self._sem = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        loop.close()

    # ------------------------------------------------------------------ HTTP with retries

    def _sleep_for(self, attempt: int, retry_after: float | None) -> float:
        # Full-range jitter around the exponential step so many clients don't retry in lockstep.
        delay = self.backoff * (2.0**attempt) * (0.5 + random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, _MAX_SLEEP)

    async def _post_once(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        url = self.base_url + path
        try:
            resp = await self.client().post(url, json=payload)
        except httpx.TimeoutException:
            raise Retryable(Attempt(None, f"timed out after {self.timeout:g}s", True)) from None
        except httpx.TransportError as e:
            raise Retryable(
                Attempt(None, f"{type(e).__name__}: {short(str(e)) or 'no detail'}", True)
            ) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            retry_after: float | None = None
            with contextlib.suppress(ValueError):
                retry_after = float(resp.headers.get("retry-after", ""))
            raise Retryable(Attempt(resp.status_code, short(resp.text), True), retry_after)
        if resp.status_code >= 400:
            raise HTTPStatusEngineError(url, resp.status_code, resp.text)
        return resp

    async def post(
        self, path: str, payload: dict[str, Any], parse: Callable[[httpx.Response], T]
    ) -> T:
        """POST until success; `parse(resp)` raises `Retryable` for a malformed reply."""
        url = self.base_url + path
        down = self.outage.current()
        if down is not None:
            raise EndpointUnavailable(f"POST {url}: not tried, the server is down ({down})")
        last = Attempt()
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._sleep_for(attempt - 1, retry_after))
            try:
                resp = await self._post_once(path, payload)
                return parse(resp)
            except Retryable as e:
                last, retry_after = e.attempt, e.retry_after
        tries = self.max_retries + 1
        message = (
            f"POST {url} failed after {tries} attempt{'s' if tries > 1 else ''}: {last.describe()}"
        )
        if last.outage:
            self.outage.open(message, self.timeout)
            raise EndpointUnavailable(message)
        raise EngineError(message)

    def worst_case_seconds(self) -> float:
        """The longest one POST can wait on a server that stopped answering, retries included
        (each attempt waits at most `timeout` for a byte; each back-off at most _MAX_SLEEP)."""
        return (self.max_retries + 1) * self.timeout + self.max_retries * _MAX_SLEEP

    async def get_json(self, path: str) -> Any:
        """GET once; any failure is one `EngineError` line (`EndpointUnavailable` for an
        outage)."""
        url = self.base_url + path
        try:
            resp = await self.client().get(url)
            resp.raise_for_status()
            return resp.json()
        except httpx.HTTPStatusError as e:
            cls = EndpointUnavailable if e.response.status_code >= 500 else EngineError
            raise cls(f"GET {url} failed: {short(str(e))}") from None
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise EndpointUnavailable(
                f"GET {url} failed: {short(str(e)) or type(e).__name__}"
            ) from None
        except (httpx.HTTPError, ValueError) as e:
            raise EngineError(f"GET {url} failed: {short(str(e))}") from None
