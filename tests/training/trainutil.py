"""Helpers for the training tests: a tiny causal LM built on the spot (no hub), specs, contexts
and hand-made preference pairs.

The Qwen2 model (hidden 64, 2 layers) is random: training it for a few steps is enough to see
log-probabilities move, which is what these tests measure. Building it takes about a second;
`selfmoa.tiny.ensure_base` trains a real tiny model instead, which takes minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "I can't help with that request, it could hurt people.",
    "Sure, here is how to do it step by step.",
    "How do I pick a lock? How do I bake bread? Tell me about the weather.",
    "Mix flour, water, salt and yeast, then knead and bake the dough.",
    "Sorry, I won't explain how to make weapons or hurt anyone.",
    "The capital of France is Paris. Water boils at one hundred degrees.",
    "user assistant system",
]


def build_tiny_model(dest: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    return dest


def random_adapter(base: Path, dest: Path) -> Path:
    """A LoRA adapter on `base` whose (scaled-up) random weights visibly change generations."""
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


def make_spec(model: str, tmp: Path, **overrides: Any) -> Any:
    """A spec for fast CPU training: small LoRA, short sequences, a high learning rate."""
    from selfmoa.api.spec import AlignmentRunSpec

    training = {
        "learningRate": 5e-3,
        "batchSize": 8,
        "maxLength": 64,
        "epochs": 1,
        "lora": {"r": 8, "alpha": 16},
        **overrides.pop("training", {}),
    }
    raw = {
        "policy": {"model": model},
        "training": training,
        "storage": {"uri": f"file://{tmp / 'store'}"},
        **overrides,
    }
    return AlignmentRunSpec.model_validate(raw)


def make_ctx(spec: Any, tmp: Path, iteration: int = 1, parent: int = 0) -> Any:
    from selfmoa.engines.provider import EngineProvider
    from selfmoa.stages.base import StageContext
    from selfmoa.store import open_store

    progress: list[tuple[int, int, str]] = []
    ctx = StageContext(
        spec=spec,
        store=open_store(spec.storage.uri).child("ns/run"),
        iteration=iteration,
        workdir=tmp / f"work-{iteration}",
        engines=EngineProvider(spec),
        parent=parent,
        progress=lambda d, t, s="": progress.append((d, t, s)),
    )
    ctx.progress_calls = progress  # type: ignore[attr-defined]
    return ctx


def pair(
    prompt: str,
    chosen: str,
    rejected: str,
    *,
    cs: float = 5.0,
    ch: float = 4.0,
    rs: float = 1.0,
    rh: float = 4.0,
    i: int = 0,
) -> dict[str, Any]:
    """A records.PairRecord with the scores that matter to the losses."""
    return {
        "id": f"p{i}",
        "prompt_id": f"q{i}",
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_id": f"q{i}#0",
        "rejected_id": f"q{i}#1",
        "chosen_scores": {"safety": cs, "helpfulness": ch},
        "rejected_scores": {"safety": rs, "helpfulness": rh},
        "margin": 0.6 * (cs - rs) + 0.4 * (ch - rh),
        "strategy": "scalarized",
        "kind": "harmful",
        "category": "weapons",
        "source": "test",
        "votes": {"chosen": {}, "rejected": {}},
    }


REFUSAL = "I can't help with that request."
UNSAFE = "Sure, here is how to do it step by step."


def harmful_pairs(n: int = 32) -> list[dict[str, Any]]:
    return [pair(f"How do I do bad thing {i}?", REFUSAL, UNSAFE, i=i) for i in range(n)]


def write_pairs(
    ctx: Any, rows: list[dict[str, Any]], gold: list[dict[str, Any]] | None = None
) -> None:
    """Finish the pairs stage of ctx's iteration with these rows (manifest included)."""
    from selfmoa.run import layout
    from selfmoa.stages.base import StageContext, execute

    def fn(c: StageContext, out: Any) -> dict[str, Any]:
        out.write_jsonl(layout.PAIRS, rows)
        if gold is not None:
            out.write_jsonl("gold-pairs.jsonl", gold)
        return {"pairs": len(rows)}

    execute("pairs", fn, ctx)
