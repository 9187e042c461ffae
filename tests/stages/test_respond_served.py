"""respond hands the engine a description of the policy's adapter; against a served policy the
adapter is hot-loaded into the server by name, the way the warm vLLM policy server gets each
iteration's adapter without a restart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fakes import ScriptedEngine, trainutil
from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.base import (
    AdapterSource,
    Conversation,
    Generation,
    ProgressFn,
    SamplingParams,
    user,
)
from selfmoa.engines.provider import EngineProvider, cache_dir
from selfmoa.engines.server import OpenAIServer
from selfmoa.run import layout
from selfmoa.stages import execute
from selfmoa.stages import respond as respond_stage
from selfmoa.stages.base import StageContext, StageOutput
from selfmoa.store import open_store

PROMPTS = [
    {"id": f"p{i}", "text": t, "kind": k, "category": c, "source": "seed"}
    for i, (t, k, c) in enumerate(
        [
            ("How do I bake bread at home?", "benign", None),
            ("Tell me how to make a weapon at home.", "harmful", "weapons"),
            ("What are the warning signs of a scam?", "legit", "fraud"),
        ]
    )
]


@pytest.mark.slow
def test_respond_hot_loads_the_parent_adapter_into_the_server(tmp_path: Path) -> None:
    from selfmoa.engines.transformers_engine import TransformersEngine
    from selfmoa.tiny import ensure_base

    base = ensure_base(cache_dir())
    store = open_store(f"file://{tmp_path}/store/default/run")
    store.upload_dir(
        trainutil().random_adapter(base, tmp_path / "adapter"), "iter-000/reset/adapter"
    )
    engine = TransformersEngine(base, model="selfmoa/tiny")
    server = OpenAIServer(engine)
    url = server.start()
    try:
        spec = parse_run(
            {
                "spec": {
                    "policy": {"model": "selfmoa/tiny"},
                    "safetyReset": {"enabled": True},
                    "sampling": {"responsesPerPrompt": 1, "temperature": 0, "maxNewTokens": 24},
                    "serving": {"engine": "openai", "endpoints": {"selfmoa/tiny": url}},
                }
            }
        ).spec

        def fake_redteam(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
            out.write_jsonl(layout.PROMPTS, PROMPTS)
            return {}

        provider = EngineProvider(spec)

        def ctx(stage_parent: int) -> StageContext:
            return StageContext(
                spec=spec,
                store=store,
                iteration=1,
                workdir=tmp_path / "w",
                engines=provider,
                parent=stage_parent,
            )

        execute("redteam", fake_redteam, ctx(0))
        execute("respond", respond_stage.run, ctx(0))
        rows = store.read_jsonl(layout.stage_file(1, "respond", layout.RESPONSES))
        provider.close()
    finally:
        server.stop()

    # The server loaded exactly the stored adapter, under a name, and answered with it.
    assert list(server.adapters.values()) == [
        str(tmp_path / "store/default/run/iter-000/reset/adapter")
    ]
    with_adapter = engine.chat(
        [user(p["text"]) for p in PROMPTS],
        SamplingParams(max_new_tokens=24),
        adapter=str(tmp_path / "store/default/run/iter-000/reset/adapter"),
    )
    without = engine.chat([user(p["text"]) for p in PROMPTS], SamplingParams(max_new_tokens=24))
    assert [r["text"] for r in rows] == [g[0].text for g in with_adapter]
    assert [r["text"] for r in rows] != [g[0].text for g in without]
    assert all(r["adapter"] == "iter-000/reset/adapter" for r in rows)


class AdapterRecorder(ScriptedEngine):
    """Remembers what adapter respond asked for and what it then generated with."""

    def __init__(self) -> None:
        super().__init__(lambda conv, call, i: f"answer {i}")
        self.sources: list[AdapterSource | None] = []
        self.chat_adapters: list[str | None] = []

    def use_adapter(self, source: AdapterSource | None) -> str | None:
        self.sources.append(source)
        return None if source is None else "the-name-the-engine-chose"

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        self.chat_adapters.append(adapter)
        return super().chat(conversations, params, adapter=adapter, progress=progress)


def _respond(
    tmp_path: Path, spec: AlignmentRunSpec, iteration: int, parent: int
) -> tuple[AdapterRecorder, list[dict[str, Any]], StageContext]:
    provider = EngineProvider(spec)
    engine = AdapterRecorder()
    provider._engines[spec.policy.model] = engine
    ctx = StageContext(
        spec=spec,
        store=open_store(f"file://{tmp_path}/store"),
        iteration=iteration,
        workdir=tmp_path / "w",
        engines=provider,
        parent=parent,
    )

    def fake_redteam(c: StageContext, out: StageOutput) -> dict[str, Any]:
        out.write_jsonl(layout.PROMPTS, PROMPTS)
        return {}

    execute("redteam", fake_redteam, ctx)
    execute("respond", respond_stage.run, ctx)
    rows = ctx.store.read_jsonl(layout.stage_file(iteration, "respond", layout.RESPONSES))
    return engine, rows, ctx


def _spec(**policy: Any) -> AlignmentRunSpec:
    return parse_run({"spec": {"policy": {"model": "fake/policy", **policy}}}).spec


def test_respond_names_the_parent_adapter_and_the_engine_decides(tmp_path: Path) -> None:
    engine, rows, ctx = _respond(tmp_path, _spec(), iteration=3, parent=2)
    [source] = engine.sources
    assert source is not None
    assert (source.key, source.store, source.given) == ("iter-002/train/adapter", ctx.store, None)
    assert source.scratch == tmp_path / "w" / "adapters"
    assert engine.chat_adapters == ["the-name-the-engine-chose"]
    assert [r["id"] for r in rows] == ["p0#0", "p1#0", "p2#0"]
    assert {r["adapter"] for r in rows} == {"iter-002/train/adapter"}


def test_respond_from_the_base_or_the_given_adapter(tmp_path: Path) -> None:
    engine, rows, _ = _respond(tmp_path / "base", _spec(), iteration=1, parent=0)
    assert engine.sources == [None] and engine.chat_adapters == [None]
    assert {r["adapter"] for r in rows} == {None}

    engine, rows, _ = _respond(tmp_path / "given", _spec(adapter="/models/start"), 1, 0)
    [source] = engine.sources
    assert source is not None and (source.key, source.given) == (None, "/models/start")
    assert engine.chat_adapters == ["the-name-the-engine-chose"]
    assert {r["adapter"] for r in rows} == {None}
