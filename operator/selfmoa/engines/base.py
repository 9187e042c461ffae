"""One small interface for text generation, in-process or over HTTP.

Stages talk to models only through `Engine.chat`: a batch of conversations in, `n` generations per
conversation out. `TransformersEngine` runs in-process (CPU tests, the tiny profile, clusters with
no GPU serving); `OpenAIEngine` talks to any OpenAI-compatible server such as vLLM, with many
requests in flight so the server can batch. The call is synchronous for the stage code; engines
that are async inside run their own event loop.

Adapters: a stage names the adapter it wants with an `AdapterSource` (a key in the run's store, or
the spec's `policy.adapter`) and `Engine.use_adapter` makes it usable, returning what to pass as
`chat(adapter=...)`. In-process engines download it to a local directory; a served engine has its
server load it under a name. Stages never need to know which kind of engine they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from selfmoa.models.chat import Conversation as Conversation
from selfmoa.models.chat import Message as Message
from selfmoa.models.chat import user as user

if TYPE_CHECKING:
    from selfmoa.store.base import Store

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
    #: > 0: also return the first token's `top_logprobs` likeliest tokens with their
    #: log-probabilities (what a judge reads "Yes" or "No" from; OpenAI's `top_logprobs`).
    top_logprobs: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    #: Generated tokens (as the engine counted them).
    tokens: int
    finish_reason: str = "stop"
    #: {token text: log-probability} of the first token's likeliest, when asked for.
    top_logprobs: dict[str, float] | None = None


class EngineError(RuntimeError):
    """A generation request failed for good (after the engine's own retries)."""


class DeviceError(EngineError):
    """The device the spec asks for isn't there (`serving.device: cuda` without a GPU)."""


@dataclass(frozen=True)
class AdapterSource:
    """A LoRA adapter as a stage names it; the engine decides how to make it usable.

    Either stored (`key` in the run's artifact `store`, e.g. `iter-001/train/adapter`) or given
    (`given`: the spec's `policy.adapter`, a directory or URI taken as written).
    """

    key: str | None = None
    store: Store | None = None
    given: str | None = None
    #: Where an in-process engine downloads a stored adapter (one subdirectory per key).
    scratch: Path | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.given is None):
            raise ValueError("AdapterSource: exactly one of key and given")
        if self.key is not None and self.store is None:
            raise ValueError("AdapterSource: a stored adapter needs its store")

    @classmethod
    def of(
        cls, store: Store, key: str | None, *, given: str | None, scratch: Path
    ) -> AdapterSource | None:
        """The adapter stored at `key`, else the `given` one; None: the base model alone."""
        if key is not None:
            return cls(key=key, store=store, scratch=scratch)
        if given:
            return cls(given=given)
        return None

    def location(self) -> str:
        """Where a server can read it: a path on this filesystem when the store has one
        (`file://`), else the store's URI; a given adapter as written."""
        if self.given is not None:
            return self.given
        assert self.store is not None and self.key is not None
        local = self.store.local_path(self.key)
        return str(local) if local is not None else f"{self.store.uri}/{self.key}"

    def local_dir(self) -> Path:
        """A local directory holding it; a stored adapter is downloaded once per scratch."""
        if self.given is not None:
            return Path(self.given)
        assert self.store is not None and self.key is not None
        local = self.store.local_path(self.key)
        if local is not None and local.is_dir():
            return local
        if self.scratch is None:
            raise EngineError(f"adapter {self.location()}: not local and nowhere to download it")
        from selfmoa.run import verified

        try:
            return verified.download(
                self.store, self.key, self.scratch / self.key.replace("/", "__")
            )
        except verified.Unverified as e:
            raise EngineError(f"adapter {self.location()}: {e}") from None


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

        `adapter` selects a LoRA adapter: what `use_adapter` returned for it. None means the base
        model.
        """

    def first_token_logprobs(
        self,
        conversations: Sequence[Conversation],
        *,
        top: int = 20,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[dict[str, float]]:
        """The `top` likeliest first tokens of the assistant's reply to each conversation, as
        {token text: log-probability} (what a judge reads "Yes" or "No" from): one token,
        greedy, asked through `chat`. An engine that returns none raises `EngineError`."""
        params = SamplingParams(max_new_tokens=1, temperature=0.0, top_logprobs=top)
        out = []
        for gens in self.chat(conversations, params, adapter=adapter, progress=progress):
            if not gens or gens[0].top_logprobs is None:
                raise EngineError(f"{self.model}: this engine gives no log-probabilities")
            out.append(gens[0].top_logprobs)
        return out

    def context_length(self) -> int | None:
        """Tokens the model attends to, prompt and completion together (None: unknown)."""
        return None

    def prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens of `conversation` as the model is prompted (a word count unless the engine
        has the model's tokenizer)."""
        return sum(len(m["content"].split()) for m in conversation)

    def use_adapter(self, source: AdapterSource | None) -> str | None:
        """Make the adapter usable; what to pass as `chat(adapter=...)` (None: the base model).

        In-process engines take a local directory, so this default downloads a stored adapter.
        """
        return None if source is None else str(source.local_dir())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, memory)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
