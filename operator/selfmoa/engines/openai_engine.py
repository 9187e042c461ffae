"""`Engine` over any OpenAI-compatible HTTP server (vLLM first of all, or `selfmoa serve`).

Why async inside: vLLM batches whatever requests are in flight, so throughput comes from keeping
up to `max_concurrency` requests open at once, not from big requests. The stages are synchronous,
so the engine owns one event loop on a private daemon thread (created on first use) and `chat`
submits a coroutine to it and waits. That also makes `chat` safe to call from a thread whose own
event loop is running: the work never runs on the caller's loop. The `httpx.AsyncClient` lives on
that loop for the engine's lifetime, so connections are reused across calls.

Failure policy: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
jitter; a reply that isn't JSON or lacks `choices[i].message.content` is a failed attempt too;
any other 4xx fails at once (retrying a bad request can't help). The final error is one line:
URL, status, short body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from selfmoa.engines.base import (
    Conversation,
    Engine,
    EngineError,
    Generation,
    ProgressFn,
    SamplingParams,
)

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


def _ignore(resp: httpx.Response) -> None:
    """A reply whose body doesn't matter (vLLM answers adapter calls with plain text)."""


def _short(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= _BODY_CHARS else one_line[:_BODY_CHARS] + "..."


@dataclass
class _Attempt:
    """Why the last attempt failed (for the final error line)."""

    status: int | None = None
    detail: str = ""

    def describe(self) -> str:
        return f"HTTP {self.status}: {self.detail}" if self.status is not None else self.detail


class HTTPStatusEngineError(EngineError):
    """The server refused a request with a 4xx other than 429 (retrying can't help)."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"POST {url} failed: HTTP {status}: {_short(body)}")
        self.status = status
        self.body = body


class _Retryable(Exception):
    def __init__(self, attempt: _Attempt, retry_after: float | None = None) -> None:
        super().__init__(attempt.describe())
        self.attempt = attempt
        self.retry_after = retry_after


class OpenAIEngine(Engine):
    """Generation through `/v1/chat/completions`, many requests in flight."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        max_concurrency: int = 64,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        api_key: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        #: False once the server has refused `n > 1`: then n separate requests are sent.
        self.supports_n = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ event loop plumbing

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"openai-engine-{self.model}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
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

    def _semaphore(self) -> asyncio.Semaphore:
        # Engine-wide, so that callers in several threads together stay within max_concurrency.
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._sem

    def _get_client(self) -> httpx.AsyncClient:
        # Created on the engine's loop (AsyncClient's pool belongs to the loop that uses it).
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

    def __enter__(self) -> OpenAIEngine:
        return self

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
            resp = await self._get_client().post(url, json=payload)
        except httpx.TimeoutException:
            raise _Retryable(_Attempt(None, f"timed out after {self.timeout:g}s")) from None
        except httpx.TransportError as e:
            raise _Retryable(
                _Attempt(None, f"{type(e).__name__}: {_short(str(e)) or 'no detail'}")
            ) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            retry_after: float | None = None
            with contextlib.suppress(ValueError):
                retry_after = float(resp.headers.get("retry-after", ""))
            raise _Retryable(_Attempt(resp.status_code, _short(resp.text)), retry_after)
        if resp.status_code >= 400:
            raise HTTPStatusEngineError(url, resp.status_code, resp.text)
        return resp

    async def _with_retries(
        self, path: str, payload: dict[str, Any], parse: Callable[[httpx.Response], T]
    ) -> T:
        """POST until success; `parse(resp)` raises `_Retryable` for a malformed reply."""
        url = self.base_url + path
        last = _Attempt()
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._sleep_for(attempt - 1, retry_after))
            try:
                resp = await self._post_once(path, payload)
                return parse(resp)
            except _Retryable as e:
                last, retry_after = e.attempt, e.retry_after
        tries = self.max_retries + 1
        raise EngineError(
            f"POST {url} failed after {tries} attempt{'s' if tries > 1 else ''}: {last.describe()}"
        )

    # ------------------------------------------------------------------ chat

    def _payload(
        self, conversation: Conversation, params: SamplingParams, model: str, n: int, seed: int
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": n,
            "seed": seed,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        return payload

    @staticmethod
    def _parse_choices(resp: httpx.Response, n: int) -> list[Generation]:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retryable(
                _Attempt(resp.status_code, f"reply is not JSON: {_short(resp.text)!r}")
            ) from None
        try:
            choices = sorted(body["choices"], key=lambda c: int(c.get("index", 0)))
            texts = [str(c["message"]["content"]) for c in choices]
            reasons = [str(c.get("finish_reason") or "stop") for c in choices]
        except (KeyError, TypeError, AttributeError, ValueError):
            raise _Retryable(
                _Attempt(
                    resp.status_code,
                    f"reply lacks choices[i].message.content: {_short(resp.text)!r}",
                )
            ) from None
        if not texts:
            raise _Retryable(
                _Attempt(resp.status_code, f"reply has no choices: {_short(resp.text)!r}")
            )
        usage = body.get("usage") if isinstance(body, dict) else None
        completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(completion, int) and completion >= 0:
            # The server counts tokens for the whole reply; spread them evenly over the choices.
            q, r = divmod(completion, len(texts))
            tokens = [q + (1 if i < r else 0) for i in range(len(texts))]
        else:
            tokens = [len(t.split()) for t in texts]
        return [Generation(t, k, f) for t, k, f in zip(texts, tokens, reasons, strict=True)][:n]

    async def _one_conversation(
        self, conversation: Conversation, params: SamplingParams, model: str, sem: asyncio.Semaphore
    ) -> list[Generation]:
        path = "/v1/chat/completions"
        n = params.n
        out: list[Generation] = []
        refused_n = False
        if n > 1 and self.supports_n:
            async with sem:
                try:
                    out = await self._with_retries(
                        path,
                        self._payload(conversation, params, model, n, params.seed),
                        lambda r: self._parse_choices(r, n),
                    )
                except HTTPStatusEngineError as e:
                    # A 400/422 on n > 1 may mean the server doesn't do `n`: try one request per
                    # sample below; if those fail too, the request itself was bad.
                    if e.status not in (400, 422):
                        raise
                    refused_n = True
        # Missing samples (no `n` support, or a server that returned fewer choices): one
        # request each, seeds offset so that seeded sampling still gives distinct samples.
        missing = range(len(out), n)

        async def single(i: int) -> Generation:
            async with sem:
                gens: list[Generation] = await self._with_retries(
                    path,
                    self._payload(conversation, params, model, 1, params.seed + i),
                    lambda r: self._parse_choices(r, 1),
                )
                return gens[0]

        out += await asyncio.gather(*(single(i) for i in missing))
        if refused_n:
            self.supports_n = False
        return out

    async def _chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        model: str,
        progress: ProgressFn | None,
    ) -> list[list[Generation]]:
        sem = self._semaphore()
        done = 0

        async def run(c: Conversation) -> list[Generation]:
            nonlocal done
            gens = await self._one_conversation(c, params, model, sem)
            done += 1
            if progress is not None:
                progress(done)
            return gens

        tasks = [asyncio.ensure_future(run(c)) for c in conversations]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # One failure ends the call: don't leave the other requests running on the loop.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        """`params.n` generations per conversation; `adapter` is a served adapter's model name.

        `progress(done)` is called from the engine's loop thread while this call waits.
        """
        if not conversations:
            return []
        return self._run(self._chat(conversations, params, adapter or self.model, progress))

    # ------------------------------------------------------------------ adapters (vLLM)

    def load_adapter(self, name: str, path: str) -> None:
        """Hot-load a LoRA adapter under `name` (vLLM needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).

        Loading a name that is already loaded counts as success, so a retried stage is harmless.
        """

        async def go() -> None:
            try:
                await self._with_retries(
                    "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, _ignore
                )
            except HTTPStatusEngineError as e:
                if not (e.status == 400 and "already" in e.body.lower()):
                    raise

        self._run(go())

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name`; one that isn't loaded (404) counts as success."""

        async def go() -> None:
            try:
                await self._with_retries("/v1/unload_lora_adapter", {"lora_name": name}, _ignore)
            except HTTPStatusEngineError as e:
                if e.status != 404:
                    raise

        self._run(go())

    def models(self) -> list[str]:
        """Model names the server serves (base model and loaded adapters)."""

        async def go() -> list[str]:
            url = self.base_url + "/v1/models"
            try:
                resp = await self._get_client().get(url)
                resp.raise_for_status()
                return [str(m["id"]) for m in resp.json()["data"]]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                raise EngineError(f"GET {url} failed: {_short(str(e))}") from None

        return self._run(go())
