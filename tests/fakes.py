"""Test doubles shared across the suites (importable as `fakes`: pytest puts tests/ on sys.path
for the root conftest)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.base import Conversation, Engine, Generation, ProgressFn, SamplingParams
from selfmoa.engines.provider import EngineProvider
from selfmoa.run import layout
from selfmoa.run.metrics import Metrics
from selfmoa.stages.base import StageContext, StageOutput

#: reply(conversation, call number starting at 1, position in the batch) -> text
Reply = Callable[[Conversation, int, int], str]


class ScriptedEngine(Engine):
    """An Engine that answers from a script and remembers every call (no model anywhere): its
    conversations and params in `calls`, the adapter it was given in `adapters` (set before the
    script runs: a script can answer per adapter). A reply that raises (an `EngineError`, say)
    fails the whole call, as a real engine's batch does."""

    def __init__(self, reply: Reply, *, model: str = "fake/model", tokens: int = 3) -> None:
        self.model = model
        self.reply = reply
        self.tokens = tokens
        self.calls: list[tuple[list[Conversation], SamplingParams]] = []
        self.adapters: list[str | None] = []

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        self.calls.append((list(conversations), params))
        self.adapters.append(adapter)
        out = [
            [Generation(self.reply(c, len(self.calls), i), tokens=self.tokens)]
            for i, c in enumerate(conversations)
        ]
        if progress is not None:
            progress(len(conversations))
        return out


class EchoEngine(Engine):
    """The model behind a served engine's tests: echoes each conversation's last message. Sample
    j reads `reply` formatted with `adapter` (the adapter asked for, else "base"), `text` (the
    message) and `seed` (`params.seed + j`), and counts 2 + j tokens. Every call costs `delay`
    seconds whatever the batch size (a GPU batch), is recorded in `calls` as (batch size,
    params, adapter) and raises with `fail`; a call while another one runs fails the test (a
    server must never call its engine from two threads at once)."""

    def __init__(
        self,
        *,
        model: str = "echo/base",
        reply: str = "{adapter}: {text} #{seed}",
        delay: float = 0.0,
        fail: bool = False,
    ) -> None:
        self.model = model
        self.reply = reply
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple[int, SamplingParams, str | None]] = []
        self._busy = threading.Lock()

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        assert self._busy.acquire(blocking=False), "engine called concurrently"
        try:
            self.calls.append((len(conversations), params, adapter))
            time.sleep(self.delay)
            if self.fail:
                raise ValueError("boom")
            tag = adapter or "base"
            return [
                [
                    Generation(
                        self.reply.format(adapter=tag, text=c[-1]["content"], seed=params.seed + j),
                        tokens=2 + j,
                    )
                    for j in range(params.n)
                ]
                for c in conversations
            ]
        finally:
            self._busy.release()


class LogprobEngine(EchoEngine):
    """An EchoEngine that gives log-probabilities when asked for them (`params.top_logprobs`, as
    `first_token_logprobs` asks, over HTTP too): one token, with `logprobs(conversation)` as its
    likeliest first tokens. `asked` holds each such batch's size."""

    def __init__(self, logprobs: Callable[[Conversation], dict[str, float]], **kw: Any) -> None:
        super().__init__(**kw)
        self.logprobs = logprobs
        self.asked: list[int] = []

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        if params.top_logprobs <= 0:
            return super().chat(conversations, params, adapter=adapter, progress=progress)
        self.asked.append(len(conversations))
        out = []
        for c in conversations:
            row = self.logprobs(c)
            first = max(row, key=row.__getitem__)
            out.append([Generation(first, 1, "length", top_logprobs=row)])
        return out


class FakeProvider(EngineProvider):
    """An EngineProvider of fakes: `engine` for every model (default: a ScriptedEngine per model,
    under its name, that answers "safe"). `asked` holds the models asked for, in order."""

    def __init__(self, spec: AlignmentRunSpec, engine: Engine | None = None) -> None:
        super().__init__(spec)
        self.engine = engine
        self.asked: list[str] = []

    def for_model(self, model: str) -> Engine:
        self.asked.append(model)
        if self.engine is not None:
            return self.engine
        return ScriptedEngine(lambda *_: "safe", model=model)


def load_file(name: str, path: Path) -> ModuleType:
    """The module at `path` (a test helper or benchmark outside any package), loaded once as
    `name`."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def trainutil() -> ModuleType:
    """tests/training/trainutil.py (a random tiny Qwen2 and a LoRA on it, in about a second),
    for suites outside tests/training."""
    return load_file("trainutil", Path(__file__).parent / "training" / "trainutil.py")


class FakeStages:
    """Stages that record their calls; evaluate writes metrics from a script of ASRs."""

    def __init__(self, asr: dict[int, float], fail_once: tuple[int, str] | None = None) -> None:
        self.asr = asr
        self.calls: list[tuple[int, str, int]] = []
        self.fail_once = fail_once

    def get(self, name: str) -> Any:
        def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
            self.calls.append((ctx.iteration, name, ctx.parent))
            out.write_json("out.json", {"stage": name})
            if self.fail_once == (ctx.iteration, name):
                self.fail_once = None
                raise RuntimeError("boom")
            if name == "evaluate":
                a = self.asr[ctx.iteration]
                m = Metrics(
                    iteration=ctx.iteration,
                    safety=1 - a,
                    helpfulness=0.8,
                    attack_success_rate=a,
                    over_refusal=0.1,
                )
                out.write_json(layout.METRICS, m.model_dump(mode="json"))
            return {"ok": True}

        return run
