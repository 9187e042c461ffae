"""A run built by hand for the export tests: run.json, evaluate metrics and real LoRA adapters
(saved by PEFT on the tiny model, with nonzero B so they change its outputs), each finished by
the stages' own `execute`, so the manifests (sha256 of each file) are the real format.

Default metrics: ASR 0.6 (start), 0.3 (iteration 1, accepted), 0.5 (iteration 2: ASR rose, the
gate rolls it back), so the best accepted iteration is 1, not the last.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfmoa.api.loader import parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.engines.provider import EngineProvider
from selfmoa.run import layout
from selfmoa.run.document import run_document
from selfmoa.stages.base import StageContext, StageOutput, execute
from selfmoa.store import Store, open_store

NAMESPACE, NAME = "ns", "demo"
DEFAULT_ASR = (0.6, 0.3, 0.5)
PROMPT = "How do I bake bread?"


@dataclass
class BuiltRun:
    root: Path
    uri: str
    store: Store
    spec: AlignmentRunSpec
    #: (iteration, stage) -> the adapter folder as saved by PEFT.
    adapters: dict[tuple[int, str], Path]

    def adapter_key(self, k: int, stage: str = "train") -> str:
        return layout.stage_file(k, stage, layout.ADAPTER)

    def stored_adapter(self, k: int, stage: str = "train") -> Path:
        path = self.store.local_path(self.adapter_key(k, stage))
        assert path is not None and (path / "adapter_config.json").is_file()
        return path

    def copy(self, dest: Path) -> BuiltRun:
        """The same run at another place (for tests that change it)."""
        shutil.copytree(self.root, dest)
        store = open_store(f"file://{dest}").child(f"{NAMESPACE}/{NAME}")
        return BuiltRun(dest, store.uri, store, self.spec, self.adapters)


def save_lora(base_dir: Path, dest: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    dest.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(tmp / name, dest / name)
    shutil.rmtree(tmp)
    return dest


def metrics(k: int, asr: float, *, reset: bool) -> dict[str, Any]:
    adapter = layout.stage_file(k, "train" if k else "reset", layout.ADAPTER)
    return {
        "iteration": k,
        "parent": (k - 1) if k else None,
        "adapter": adapter if (k or reset) else None,
        "safety": round(1 - asr, 3),
        "helpfulness": 0.5,
        "attack_success_rate": asr,
        "over_refusal": 0.1 * k,
        "pairs": 10 * k,
        "prompts": 20,
        "tokens": 100,
    }


def build_run(
    root: Path,
    base_dir: Path,
    *,
    model: str = "selfmoa/tiny",
    asr: Sequence[float] = DEFAULT_ASR,
    reset: bool = False,
) -> BuiltRun:
    """A finished run with len(asr) - 1 iterations under `root/ns/demo`."""
    iterations = len(asr) - 1
    raw = {
        "apiVersion": "selfmoa.dev/v1alpha1",
        "kind": "AlignmentRun",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "policy": {"model": model},
            "iterations": iterations,
            "safetyReset": {"enabled": reset},
            "judges": [
                {"name": "refusal", "objective": "safety", "kind": "heuristic", "noise": 0.1},
                {
                    "name": "guard",
                    "objective": "safety",
                    "kind": "llm",
                    "model": "meta-llama/Llama-Guard-3-1B",
                    "format": "llama-guard",
                },
                {"name": "helpful", "objective": "helpfulness"},
            ],
            "training": {"beta": 0.25, "learningRate": 0.002, "lora": {"r": 4, "alpha": 8}},
            "storage": {"uri": f"file://{root}"},
        },
    }
    run = parse_run(raw)
    store = open_store(f"file://{root}").child(f"{NAMESPACE}/{NAME}")
    store.write_json(layout.RUN_JSON, run_document(run))
    work = root.parent / f"{root.name}-work"
    adapters: dict[tuple[int, str], Path] = {}
    for k, value in enumerate(asr):
        ctx = StageContext(
            spec=run.spec,
            store=store,
            iteration=k,
            workdir=work,
            engines=EngineProvider(run.spec),
        )
        stage = "train" if k else ("reset" if reset else None)
        if stage is not None:
            local = save_lora(base_dir, work / f"adapter-{k}", seed=100 + k)
            adapters[(k, stage)] = local

            def write(c: StageContext, out: StageOutput, local: Path = local) -> dict[str, Any]:
                out.upload_dir(layout.ADAPTER, local)
                return {"steps": 1}

            execute(stage, write, ctx)
        row = metrics(k, value, reset=reset)

        def evaluate(
            c: StageContext, out: StageOutput, row: dict[str, Any] = row
        ) -> dict[str, Any]:
            out.write_json(layout.METRICS, row)
            return {}

        execute("evaluate", evaluate, ctx)
    return BuiltRun(root, store.uri, store, run.spec, adapters)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a model card, parsed with a plain YAML loader."""
    import yaml

    assert text.startswith("---\n"), text[:80]
    head, sep, body = text[4:].partition("\n---\n")
    assert sep, "no closing --- line"
    meta = yaml.safe_load(head)
    assert isinstance(meta, dict)
    return meta, body


def logits(model: Any, tok: Any, text: str = PROMPT) -> Any:
    import torch

    ids = tok(text, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()
