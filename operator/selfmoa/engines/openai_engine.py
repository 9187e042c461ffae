"""`Engine` over any OpenAI-compatible HTTP server (vLLM first of all, or `selfmoa serve`).

Requests go through a `RetryingClient` (`engines/http.py`): many in flight on a private event
loop, so the server can batch, with retries on connection errors, timeouts, 429 and 5xx. A chat
reply that isn't JSON or lacks `choices[i].message.content` is a failed attempt too. A server that
refuses `n > 1` gets one request per sample from then on.

Adapters: `use_adapter` makes a LoRA adapter servable under a name that is the same for the same
adapter every time (a retried stage reuses it). Where the server can read the adapter (a path on
a shared `file://` store, or the spec's given adapter) the engine hot-loads it itself (vLLM's
`/v1/load_lora_adapter`). A stored adapter the server can't read (`s3://`) goes through the
adapter agents beside every replica when the engine has them (`adapter_agents=`, see
`selfmoa.engines.agent`): the engine asks for it in the run's store and waits until every replica
serves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from selfmoa.engines.agent.client import AgentDelivery
from selfmoa.engines.base import (
    AdapterSource,
    Conversation,
    Engine,
    EngineError,
    Generation,
    ProgressFn,
    SamplingParams,
)
from selfmoa.engines.http import (
    Attempt,
    HTTPStatusEngineError,
    Retryable,
    RetryingClient,
    normalize_base_url,
    short,
)
from selfmoa.models.chat import continues

__all__ = [
    "AgentDelivery",
    "HTTPStatusEngineError",
    "OpenAIEngine",
    "adapter_location",
    "normalize_base_url",
    "reply_message",
    "served_adapter_name",
]


def _ignore(resp: httpx.Response) -> None:
    """A reply whose body doesn't matter."""


def served_adapter_name(location: str) -> str:
    """The stable model name an adapter is served under: one per place it is read from."""
    return "selfmoa-" + hashlib.sha256(location.encode()).hexdigest()[:10]


def adapter_location(source: AdapterSource) -> str:
    """Where the server reads an adapter from: the shared path on a `file://` store, else the
    store URI (vLLM reads `s3://` only with an S3 LoRA resolver).

    A stored adapter on a store the server can't read goes through the adapter agents instead
    when the engine has them (`OpenAIEngine(adapter_agents=...)`).
    """
    return source.location()


def reply_message(text: str) -> str:
    """The message of an adapter-API reply in any of vLLM's shapes: plain text (older
    versions), `{"message": ...}` or `{"error": {"message": ...}}` (newer)."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return text
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return text if isinstance(body, dict | list) else str(body)


def first_token_logprobs(raw: Any) -> dict[str, float] | None:
    """{token: log-probability} of the first token's `top_logprobs` in an OpenAI chat choice's
    `logprobs` (None when the choice has none)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list) or not raw["content"]:
        return None
    first = raw["content"][0]
    tops = first.get("top_logprobs") if isinstance(first, dict) else None
    if not isinstance(tops, list):
        return None
    out: dict[str, float] = {}
    for t in tops:
        if isinstance(t, dict) and isinstance(t.get("token"), str):
            lp = t.get("logprob")
            if isinstance(lp, int | float):
                out.setdefault(t["token"], float(lp))
    return out


def _is_error_body(text: str) -> bool:
    """A JSON error object (some servers answer 200 with one)."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and (body.get("object") == "error" or "error" in body)


def _already_loaded(message: str) -> bool:
    return "already" in message.lower()


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
        adapter_locator: Callable[[AdapterSource], str] = adapter_location,
        adapter_agents: AgentDelivery | None = None,
    ) -> None:
        self.http = RetryingClient(
            base_url,
            name=model,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )
        self.base_url = self.http.base_url
        self.model = model
        #: How many requests may be in flight (callers such as the LLM judge size batches by it).
        self.max_concurrency = max_concurrency
        self.adapter_locator = adapter_locator
        #: Delivers stored adapters the server can't read (None: hand the server the location).
        self.adapter_agents = adapter_agents
        #: False once the server has refused `n > 1`: then n separate requests are sent.
        self.supports_n = True

    def __enter__(self) -> OpenAIEngine:
        return self

    def close(self) -> None:
        self.http.close()

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
        if params.top_logprobs > 0:
            payload["logprobs"] = True
            payload["top_logprobs"] = params.top_logprobs
        if continues(conversation):
            # vLLM's extension: go on with the final assistant message instead of a new turn.
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    @staticmethod
    def _parse_choices(resp: httpx.Response, n: int) -> list[Generation]:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Retryable(
                Attempt(resp.status_code, f"reply is not JSON: {short(resp.text)!r}")
            ) from None
        try:
            choices = sorted(body["choices"], key=lambda c: int(c.get("index", 0)))
            texts = [str(c["message"]["content"]) for c in choices]
            reasons = [str(c.get("finish_reason") or "stop") for c in choices]
            firsts = [first_token_logprobs(c.get("logprobs")) for c in choices]
        except (KeyError, TypeError, AttributeError, ValueError):
            raise Retryable(
                Attempt(
                    resp.status_code,
                    f"reply lacks choices[i].message.content: {short(resp.text)!r}",
                )
            ) from None
        if not texts:
            raise Retryable(
                Attempt(resp.status_code, f"reply has no choices: {short(resp.text)!r}")
            )
        usage = body.get("usage") if isinstance(body, dict) else None
        completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(completion, int) and completion >= 0:
            # The server counts tokens for the whole reply; spread them evenly over the choices.
            q, r = divmod(completion, len(texts))
            tokens = [q + (1 if i < r else 0) for i in range(len(texts))]
        else:
            tokens = [len(t.split()) for t in texts]
        return [
            Generation(t, k, f, top_logprobs=lp)
            for t, k, f, lp in zip(texts, tokens, reasons, firsts, strict=True)
        ][:n]

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
                    out = await self.http.post(
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
                gens: list[Generation] = await self.http.post(
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
        sem = self.http.semaphore()
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
        return self.http.run(self._chat(conversations, params, adapter or self.model, progress))

    # ------------------------------------------------------------------ adapters (vLLM)

    def use_adapter(self, source: AdapterSource | None) -> str | None:
        """Make the adapter servable; the model name to ask for it by.

        A stored adapter with no path on this machine goes through the adapter agents (when the
        engine has them): this returns once every replica serves it. Anything else is
        hot-loaded from where `adapter_locator` says the server can read it.
        """
        if source is None:
            return None
        if (
            self.adapter_agents is not None
            and source.key is not None
            and source.store is not None
            and source.store.local_path(source.key) is None
        ):
            return self.adapter_agents.deliver(source, self.model)
        location = self.adapter_locator(source)
        name = served_adapter_name(location)
        self.load_adapter(name, location)
        return name

    def load_adapter(self, name: str, path: str) -> None:
        """Hot-load a LoRA adapter under `name` (vLLM needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).

        Plain-text and JSON replies are both accepted (vLLM changed the format across versions);
        a name that is already loaded counts as success, so a retried stage is harmless.
        """
        route = "/v1/load_lora_adapter"

        def check(resp: httpx.Response) -> None:
            if _is_error_body(resp.text) and not _already_loaded(reply_message(resp.text)):
                raise HTTPStatusEngineError(self.base_url + route, resp.status_code, resp.text)

        async def go() -> None:
            try:
                await self.http.post(route, {"lora_name": name, "lora_path": path}, check)
            except HTTPStatusEngineError as e:
                if not (e.status in (400, 409) and _already_loaded(reply_message(e.body))):
                    raise

        self.http.run(go())

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name`; one that isn't loaded (404) counts as success."""

        async def go() -> None:
            try:
                await self.http.post("/v1/unload_lora_adapter", {"lora_name": name}, _ignore)
            except HTTPStatusEngineError as e:
                if e.status != 404:
                    raise

        self.http.run(go())

    def models(self) -> list[str]:
        """Model names the server serves (base model and loaded adapters)."""
        return [str(m["id"]) for m in self.model_cards()]

    def model_cards(self) -> list[dict[str, Any]]:
        """The server's `/v1/models` entries (`id`; for an adapter vLLM adds `root`, the path it
        was loaded from, and `parent`, the base model)."""
        body = self.http.run(self.http.get_json("/v1/models"))
        try:
            cards = [dict(m) for m in body["data"]]
            for m in cards:
                m["id"] = str(m["id"])
        except (KeyError, TypeError, ValueError) as e:
            url = self.base_url + "/v1/models"
            raise EngineError(f"GET {url} failed: unexpected reply ({short(str(e))})") from None
        return cards
