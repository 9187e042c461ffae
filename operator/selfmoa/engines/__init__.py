"""Text generation engines behind one interface (see `selfmoa.engines.base`)."""

from selfmoa.engines.base import (
    Conversation,
    Engine,
    EngineError,
    Generation,
    Message,
    SamplingParams,
    user,
)

__all__ = [
    "Conversation",
    "Engine",
    "EngineError",
    "Generation",
    "Message",
    "SamplingParams",
    "user",
]
