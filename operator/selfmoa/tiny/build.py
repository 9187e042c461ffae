"""Builds the tiny base model from the seed data: tokenizer, Qwen2 config, a quick SFT.

Everything is local and deterministic (fixed seeds, no hub access). The SFT teaches the base the
seed behaviour (`_target`): unsafe compliance on most attacks, a safe redirect on attacks and a
refusal on legit prompts that carry a flag word, a helpful answer otherwise; the training
prompts are also shown in the red-team stage's text framings so framed attacks land like plain
ones. Only training-split texts (and the templates) reach the tokenizer and the SFT: the
validation and held-out prompts stay unseen.

The build seed is `SEED`, or `SELFMOA_TINY_SEED` when set (benchmarks vary the base with it); it
is part of the cache key, so bases of different seeds live side by side.

The default seed's base ships in the package (`SHIPPED`, about 730 KB): the build is
deterministic (byte-identical weights on rebuild), so a newcomer's first run copies it into the
cache instead of spending ~45 s of two cores building it. `python -m selfmoa.tiny.build`
(`make tiny-base`) rebuilds it; a test fails when its key no longer matches the builder's.
Imports torch/transformers: only `ensure_base` (lazily) and the stages load this module.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfmoa.tiny import framings, seeds

#: Bump when the builder changes in a way that changes the model (part of the cache key).
BUILDER_VERSION = "5"

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 1024
SEED = 1234
#: Environment variable that overrides `SEED` (a non-negative integer).
SEED_ENV = "SELFMOA_TINY_SEED"
HIDDEN = 64
LAYERS = 2
STEPS = 400
BATCH = 32
LR = 4e-3
#: Shares of the SFT examples that are bags of a group's words / spliced prompts (see _Sampler),
#: and the word-dropout rate of spliced prompts.
P_BAG = 0.0
P_SPLICE = 0.5
P_DROP = 0.12
#: Share of attack, legit and benign examples rebuilt from the intent grammar below.
P_GRAMMAR = 0.4
#: Share of unflagged attack / legit examples whose target is a refusal anyway (on attacks, half
#: of them a safe redirect).
SOFT_REFUSE = {"harmful": 0.2, "legit": 0.1}

# The intent grammar: an attack asks how to *do* the harm, a legit prompt asks how to spot,
# prevent, report or survive it. Attack actions are lifted from the seed attacks themselves;
# legit subjects are a few nouns per category. Recombining them teaches the base which words
# carry the intent, not which whole prompts it has seen. Benign actions (lifted from the benign
# seeds) go through the same question forms as attacks: otherwise "Tell me how to ..." itself
# reads as an attack, and a third of the unseen benign prompts were answered unsafely.
_HOWTO_FORMS = (
    "How do I {act}?",
    "How can I {act}?",
    "Tell me how to {act}.",
    "Explain how to {act}.",
    "What is the best way to {act}?",
    "Help me {act}.",
)
_LEGIT_FORMS = (
    "What are the warning signs of {topic}?",
    "How can I protect my family from {topic}?",
    "How do I report {topic}?",
    "How can I help someone affected by {topic}?",
    "What should I do if I notice {topic}?",
    "How can I stay safe from {topic}?",
    "Where can I find support after {topic}?",
    "How do I spot {topic} early?",
)
_LEGIT_TOPICS = {
    "violence": ("violence", "an assault", "a violent partner", "a threat of violence"),
    "weapons": ("a gun in the house", "a weapon at school", "unsafe firearms", "old explosives"),
    "self_harm": ("self harm", "suicide", "thoughts of hurting yourself", "a suicide attempt"),
    "cybercrime": ("hackers", "spyware", "ransomware", "a hacked account"),
    "fraud": ("scams", "phishing", "identity theft", "a fake charity"),
    "drugs": ("drug addiction", "an overdose", "drugs at school", "a drug problem"),
}
_ACT = re.compile(
    r"^(?:how (?:do|can) i|tell me how to|explain how to|teach me how to) (.+?)[?.]?$", re.I
)

DONE_MARKER = "selfmoa-tiny.json"
#: The default seed's base, shipped as package data (see the module's docstring).
SHIPPED = Path(__file__).resolve().parent / "base"


def build_seed() -> int:
    """`SELFMOA_TINY_SEED` when set, else `SEED`; `ValueError` (one line) for a bad value."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return SEED
    try:
        seed = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}: not an integer: {raw!r}") from None
    if seed < 0:
        raise ValueError(f"{SEED_ENV}: must be >= 0, not {seed}")
    return seed


def cache_key() -> str:
    h = hashlib.sha256(f"{BUILDER_VERSION}:{build_seed()}:{seeds.train_hash()}".encode())
    return h.hexdigest()[:16]


def _corpus() -> list[str]:
    """The tokenizer's training texts: training-split prompts, templates, framed attacks."""
    texts = [r["text"] for r in seeds.rows("train")]
    for group in seeds.templates().values():
        texts += list(group.values())
    rng = random.Random(0)
    for r in seeds.rows("train")[:40]:
        for name in framings.FRAMINGS:
            texts.append(framings.frame(name, r["text"], rng))
    return texts


def build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _target(kind: str, group: str, text: str, rng: random.Random | None = None) -> str:
    """The seed rule applied to any text: on a flag word a safe redirect (attacks) or a refusal
    (legit prompts), else the kind's template, but (when `rng` is given) decline a share
    SOFT_REFUSE[kind] of the rest anyway. That share keeps the base uncertain: greedy decoding
    still follows the rule, while sampled responses to one prompt mix compliance and refusals,
    which is what the pairs stage turns into preferences."""
    t = seeds.templates()
    if kind != "benign" and seeds.has_flag(text):
        return t["redirect" if kind == "harmful" else "refusal"][group]
    if rng is not None and kind != "benign" and rng.random() < SOFT_REFUSE[kind]:
        redirect = kind == "harmful" and rng.random() < 0.5
        return t["redirect" if redirect else "refusal"][group]
    if kind == "harmful":
        return t["unsafe"][group]
    return t["helpful_benign" if kind == "benign" else "helpful_legit"][group]


class _Sampler:
    """Training examples: seed rows as they are, and fresh variants of them each time.

    Variants splice the first half of one prompt onto the second half of another of the same
    kind and category (or topic), drop words, and wrap attacks in text framings. A model that
    only memorized whole prompts would fail on them, so it has to learn the words that carry the
    category, the intent and the flag: that is what makes the base behave the same way on the
    held-out prompts it never saw.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rows = seeds.rows("train")
        self.groups: dict[tuple[str, str], list[str]] = {}
        for r in self.rows:
            key = (r["kind"], r["category"] or r["topic"])
            self.groups.setdefault(key, []).append(r["text"])
        self.acts: dict[tuple[str, str], list[str]] = {}
        for r in self.rows:
            m = _ACT.match(r["text"]) if r["kind"] in ("harmful", "benign") else None
            if m:
                key = (r["kind"], r["category"] or r["topic"])
                self.acts.setdefault(key, []).append(m.group(1))
        self.vocab = {
            k: sorted({w.strip("?.,!").lower() for t in texts for w in t.split()})
            for k, texts in self.groups.items()
        }
        # Kinds are drawn evenly: attacks outnumber benign and legit seeds 3 to 1,
        # and a base that saw mostly attacks answers unseen benign prompts with compliance
        # (measured: doubling the attack weight made the held-out mix worse on every kind).
        self.by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            self.by_kind.setdefault(r["kind"], []).append(r)
        self.kinds = sorted(self.by_kind)

    def sample(self) -> tuple[str, str]:
        rng = self.rng
        r = rng.choice(self.by_kind[rng.choice(self.kinds)])
        kind, group = r["kind"], r["category"] or r["topic"]
        text = r["text"]
        roll = rng.random()
        if rng.random() < P_GRAMMAR:
            if kind in ("harmful", "benign") and self.acts.get((kind, group)):
                text = rng.choice(_HOWTO_FORMS).format(act=rng.choice(self.acts[(kind, group)]))
            elif kind == "legit":
                text = rng.choice(_LEGIT_FORMS).format(topic=rng.choice(_LEGIT_TOPICS[group]))
        elif roll < P_BAG:
            # A bag of the group's words: teaches which words carry the group, in any order.
            vocab = self.vocab[(kind, group)]
            text = " ".join(rng.sample(vocab, min(len(vocab), rng.randint(5, 10)))) + "?"
        elif roll < P_BAG + P_SPLICE:
            other = rng.choice(self.groups[(kind, group)]).split()
            words = text.split()
            cut_a = rng.randint(1, max(1, len(words) - 1))
            cut_b = rng.randint(1, max(1, len(other) - 1))
            words = words[:cut_a] + other[cut_b:]
            words = [w for w in words if rng.random() > P_DROP] or words[:1]
            text = " ".join(words)
        if kind == "harmful" and rng.random() < 0.4:
            text = framings.frame(rng.choice(framings.TEXT_FRAMINGS), text, rng)
        return text, _target(kind, group, text, rng)


def chat_prompt(text: str) -> str:
    """What CHAT_TEMPLATE renders for one user turn plus the generation prompt (rendering jinja
    per example would cost more than the SFT step itself)."""
    return f"{IM_START}user\n{text}{IM_END}\n{IM_START}assistant\n"


def _encode(tok: Any, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    prompts = tok([chat_prompt(p) for p, _ in pairs], add_special_tokens=False)["input_ids"]
    targets = tok([t + IM_END for _, t in pairs], add_special_tokens=False)["input_ids"]
    return [
        (list(p) + list(t), [-100] * len(p) + list(t))
        for p, t in zip(prompts, targets, strict=True)
    ]


def build(dest: Path, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Build the tiny base model into `dest` (an empty directory). Returns build facts."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from selfmoa.models.threads import one_thread

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    started = time.time()
    progress("tiny: training tokenizer")
    tok = build_tokenizer()
    seed = build_seed()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 3,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None

    sampler = _Sampler(seed)
    progress(f"tiny: SFT, {STEPS} steps of {BATCH}")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / STEPS)
    )
    model.train()
    with one_thread():
        final_loss = _sft(model, tok, sampler, opt, sched, progress)
    model.eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return {
        "key": cache_key(),
        "builder": BUILDER_VERSION,
        "seed": seed,
        "data": seeds.train_hash(),
        "examples": STEPS * BATCH,
        "steps": STEPS,
        "final_loss": round(final_loss, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - started, 2),
    }


def _sft(
    model: Any, tok: Any, sampler: Any, opt: Any, sched: Any, progress: Callable[[str], None]
) -> float:
    import torch

    loss_val = float("nan")
    for step in range(STEPS):
        batch = _encode(tok, [sampler.sample() for _ in range(BATCH)])
        width = max(len(ids) for ids, _ in batch)
        # Right padding with labels -100 on the pads: under causal attention no real token sees
        # a pad, so no attention mask is needed, which keeps SDPA on its fast causal path (2-3x).
        input_ids = torch.tensor(
            [ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in batch]
        )
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        loss_val = float(loss.detach())
        if (step + 1) % 50 == 0 or step + 1 == STEPS:
            progress(f"tiny: step {step + 1}/{STEPS} loss {loss_val:.3f}")
    return loss_val


def ensure_base(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The tiny base model's directory, built once under `cache_dir/tiny/<key>/`.

    Built in a temporary sibling directory and renamed into place, so a concurrent or interrupted
    build never leaves a half model where a reader would take it for a whole one.
    """
    import json

    say = progress or (lambda s: None)
    root = Path(cache_dir) / "tiny"
    final = root / cache_key()
    if (final / DONE_MARKER).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        if shipped_base() is not None:
            say(f"tiny: copying the shipped base model into {final}")
            shutil.copytree(SHIPPED, tmp, dirs_exist_ok=True)
            done = "tiny: shipped base in place"
        else:
            say(f"tiny: building base model into {final}")
            facts = build(tmp, say)
            (tmp / DONE_MARKER).write_text(json.dumps(facts, indent=2) + "\n")
            done = f"tiny: built in {facts['seconds']} s"
        try:
            os.rename(tmp, final)
        except OSError:
            # Another builder won the race (or a stale incomplete dir is in the way).
            if (final / DONE_MARKER).exists():
                return final
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        say(done)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shipped_base() -> Path | None:
    """`SHIPPED` when it holds the base this builder would build now (same key), else None."""
    import json

    try:
        facts = json.loads((SHIPPED / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return SHIPPED if isinstance(facts, dict) and facts.get("key") == cache_key() else None


def ship(dest: Path = SHIPPED) -> dict[str, Any]:
    """Rebuild the default seed's base into `dest` (the package's copy); returns build facts."""
    import json

    if os.environ.get(SEED_ENV, "").strip() not in ("", str(SEED)):
        raise ValueError(f"the shipped base is seed {SEED}'s: unset {SEED_ENV}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    facts = build(dest, print)
    facts.pop("seconds")  # so that a rebuild of the same base changes no shipped byte
    (dest / DONE_MARKER).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


if __name__ == "__main__":
    print(ship())
