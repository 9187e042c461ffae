"""respond against a served policy: the adapter is hot-loaded into the server by name, the way
the warm vLLM policy server gets each iteration's adapter without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selfmoa import layout
from selfmoa.api import parse_run
from selfmoa.engines.base import SamplingParams, user
from selfmoa.engines.provider import EngineProvider, cache_dir
from selfmoa.engines.server import OpenAIServer
from selfmoa.stages import execute
from selfmoa.stages import respond as respond_stage
from selfmoa.stages.base import StageContext, StageOutput
from selfmoa.store import open_store

pytestmark = pytest.mark.slow

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


def _random_adapter(base: Path, dest: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    model.save_pretrained(str(dest))
    return dest


def test_respond_hot_loads_the_parent_adapter_into_the_server(tmp_path: Path) -> None:
    from selfmoa.engines.transformers_engine import TransformersEngine
    from selfmoa.tiny import ensure_base

    base = ensure_base(cache_dir())
    store = open_store(f"file://{tmp_path}/store/default/run")
    store.upload_dir(_random_adapter(base, tmp_path / "adapter"), "iter-000/reset/adapter")
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
