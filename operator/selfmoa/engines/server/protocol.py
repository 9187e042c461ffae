"""The OpenAI wire format `selfmoa serve` speaks: request parsing, replies and error bodies.

Pure functions over JSON-shaped dicts (no sockets, no threads), stdlib only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from selfmoa.engines.base import Conversation, Generation, Message, SamplingParams

MAX_N = 128

#: The error `type` for a status when the route doesn't name one (the OpenAI client's names).
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}


class ApiError(Exception):
    """A request the server refuses: becomes an HTTP error with an OpenAI error body."""

    def __init__(
        self,
        message: str,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """vLLM's error body (since v0.10.1, the OpenAI shape): `{"error": {...}}`."""
    kind = kind or _ERROR_TYPES.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


# ---------------------------------------------------------------- requests


def _content(raw: Any) -> str:
    # OpenAI allows content as a list of parts; only text parts mean anything to our engines.
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        parts = [p.get("text", "") for p in raw if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(raw):
            return "".join(str(p) for p in parts)
    raise ApiError("messages[].content must be a string or a list of text parts")


def messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ApiError("'messages' must be a non-empty list")
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError("each message needs a string 'role' and a 'content'")
        out.append({"role": m["role"], "content": _content(m.get("content"))})
    return out


def conversations(body: dict[str, Any], *, chat: bool) -> list[Conversation]:
    """The conversations a chat or completions request asks for. A chat whose last message is
    the assistant's is continued only with vLLM's `continue_final_message: true` (and
    `add_generation_prompt: false`); without it vLLM would start a new assistant turn, which
    this server does not do, so it refuses the request instead of answering differently."""
    if chat:
        msgs = messages(body.get("messages"))
        cont = body.get("continue_final_message") is True
        if cont and (msgs[-1]["role"] != "assistant" or body.get("add_generation_prompt", True)):
            raise ApiError(
                "continue_final_message needs a final assistant message and "
                "add_generation_prompt: false"
            )
        if not cont and msgs[-1]["role"] == "assistant":
            raise ApiError(
                "a final assistant message is continued only with continue_final_message: true"
            )
        return [msgs]
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError("'prompt' must be a string or a non-empty list of strings")
    # The Engine interface is chat-only: a raw prompt becomes one user turn.
    return [[{"role": "user", "content": p}] for p in prompts]


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ApiError(f"'{key}' must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise ApiError("'stop' must be a string or a list of strings")


def sampling(body: dict[str, Any]) -> SamplingParams:
    stops = _stops(body.get("stop"))
    if body.get("stream"):
        raise ApiError("streaming is not supported by this server")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    top = 0
    if body.get("logprobs") is True:
        top = int(_number(body, "top_logprobs", 1, 1, 20))
        if max_tokens != 1:
            # An in-process engine reads the first token's distribution in one forward pass.
            raise ApiError("this server gives log-probabilities for one token only (max_tokens: 1)")
    return SamplingParams(
        top_logprobs=top,
        max_new_tokens=int(_number({"max_tokens": max_tokens}, "max_tokens", 64, 1, 1 << 20)),
        # OpenAI's defaults: temperature 1, top_p 1. The seed defaults to 0 (not random) so that
        # unseeded requests stay reproducible and batch together.
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        n=int(_number(body, "n", 1, 1, MAX_N)),
        seed=int(_number(body, "seed", 0, -(1 << 63), (1 << 63) - 1)),
        stop=stops,
    )


# ---------------------------------------------------------------- replies


def usage(prompts: Sequence[Conversation], results: list[list[Generation]]) -> dict[str, int]:
    # The engine reports generated tokens; prompt tokens are a whitespace estimate.
    prompt = sum(len(m["content"].split()) for c in prompts for m in c)
    completion = sum(g.tokens for gens in results for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def reply_head(
    *, chat: bool, model: str, prompts: Sequence[Conversation], results: list[list[Generation]]
) -> dict[str, Any]:
    """A completion reply without its `choices`."""
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "usage": usage(prompts, results),
    }


def _logprobs(g: Generation) -> dict[str, Any] | None:
    """OpenAI's (and vLLM's) chat `logprobs` of a one-token reply, when it was asked for."""
    if g.top_logprobs is None:
        return None
    best = max(g.top_logprobs, key=g.top_logprobs.__getitem__)
    tops = [{"token": t, "logprob": lp} for t, lp in g.top_logprobs.items()]
    return {"content": [{"token": best, "logprob": g.top_logprobs[best], "top_logprobs": tops}]}


def choices(results: list[list[Generation]], *, chat: bool, n: int) -> list[dict[str, Any]]:
    if chat:
        return [
            {
                "index": j,
                "message": {"role": "assistant", "content": g.text},
                "finish_reason": g.finish_reason,
                "logprobs": _logprobs(g),
            }
            for j, g in enumerate(results[0])
        ]
    return [
        {"index": i * n + j, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
        for i, gens in enumerate(results)
        for j, g in enumerate(gens)
    ]
