"""Test doubles shared across the suites (importable as `fakes`: pytest puts tests/ on sys.path
for the root conftest)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from selfmoa.engines.base import Conversation, Engine, Generation, ProgressFn, SamplingParams
from selfmoa.run import layout
from selfmoa.run.metrics import Metrics
from selfmoa.stages.base import StageContext, StageOutput

#: reply(conversation, call number starting at 1, position in the batch) -> text
Reply = Callable[[Conversation, int, int], str]


class ScriptedEngine(Engine):
    """An Engine that answers from a script and remembers every call (no model anywhere)."""

    def __init__(self, reply: Reply, *, model: str = "fake/model", tokens: int = 3) -> None:
        self.model = model
        self.reply = reply
        self.tokens = tokens
        self.calls: list[tuple[list[Conversation], SamplingParams]] = []

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        self.calls.append((list(conversations), params))
        out = [
            [Generation(self.reply(c, len(self.calls), i), tokens=self.tokens)]
            for i, c in enumerate(conversations)
        ]
        if progress is not None:
            progress(len(conversations))
        return out


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
