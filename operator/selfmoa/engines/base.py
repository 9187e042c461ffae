"""One small interface for text generation, in-process or over HTTP.

Stages talk to models only through `Engine.chat`: a batch of conversations in, `n` generations per
conversation out. `TransformersEngine` runs in-process (CPU tests, the tiny profile, clusters with
no GPU serving); `OpenAIEngine` talks to any OpenAI-compatible server such as vLLM, with many
requests in flight so the server can batch. The call is synchronous for the stage code; engines
that are async inside run their own event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict


class Message(TypedDict):
    role: str
    content: str


Conversation = Sequence[Message]

#: Called with the number of conversations finished so far.
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Generation:
    text: str
    #: Generated tokens (as the engine counted them).
    tokens: int
    finish_reason: str = "stop"


class EngineError(RuntimeError):
    """A generation request failed for good (after the engine's own retries)."""


class Engine(ABC):
    """Text generation for one model (optionally with a LoRA adapter chosen per call)."""

    #: The model id this engine serves (for provenance in artifacts).
    model: str

    @abstractmethod
    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        """`params.n` generations for every conversation, in order.

        `adapter` selects a LoRA adapter: a local directory for in-process engines, the served
        adapter's model name for OpenAI-compatible servers. None means the base model.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, memory)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def user(text: str, system: str | None = None) -> list[Message]:
    """A one-turn conversation."""
    msgs: list[Message] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": text})
    return msgs
