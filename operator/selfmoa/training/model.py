"""Loading the policy for training, saving its adapter, and scoring completions.

One rule matters here: the adapter we upload must load on the *base* model alone (that is how
vLLM and the transformers engine serve it), so training always continues the parent's LoRA
adapter instead of merging it and starting a new one.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from selfmoa.api.spec import LoraSpec
from selfmoa.models.chat import has_chat_template, render_prompt, user
from selfmoa.models.threads import cpu_threads_for
from selfmoa.training import distributed

#: The adapter name PEFT gives the trained adapter; the only one we ever save.
ADAPTER_NAME = "default"
#: Files of a saved adapter that belong in the store (no trainer state, no README).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def set_seed(seed: int) -> None:
    """Every RNG a LoRA init or a training step draws from."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


def load_base(path: Path | str) -> PreTrainedModel:
    """The base model in fp32 on CPU, bf16 on a GPU that supports it (under torchrun: the GPU of
    this process's local rank)."""
    dtype = torch.bfloat16 if _use_bf16() else torch.float32
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if distributed.on_cuda():
        device = torch.device("cuda", distributed.world().local_rank)
        model = model.to(device)  # type: ignore[arg-type]
    return model


def _use_bf16() -> bool:
    return bool(distributed.on_cuda() and torch.cuda.is_bf16_supported())


def use_cpu() -> bool:
    return not distributed.on_cuda()


def lora_config(spec: LoraSpec, model: Any = None) -> LoraConfig:
    """The adapter's configuration; with `top_layers`, `model` (the base) says which layers
    and linear modules there are (PEFT takes a layer list only with named modules)."""
    layers: list[int] | None = None
    # PEFT's shorthand for every linear layer except the output head (TRL refuses an adapter
    # on lm_head: its log-probs read lm_head.weight directly).
    targets: list[str] | str = spec.target_modules or "all-linear"
    if spec.top_layers is not None:
        if model is None:
            raise ValueError("training.lora.topLayers: needs the base model to pick layers")
        total = int(model.config.num_hidden_layers)
        layers = list(range(max(0, total - spec.top_layers), total))
        if targets == "all-linear":
            targets = linear_module_names(model)
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def linear_module_names(model: Any) -> list[str]:
    """The leaf names of the decoder's linear layers (q_proj, up_proj, ...; never lm_head).

    A base that already carries a LoRA (PEFT wraps it in place) names the same modules: PEFT's
    own `base_layer` and `lora_A.default` linears are not the model's."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and "lm_head" not in name
        and ".lora_" not in name
        and not name.endswith(".base_layer")
    }
    return sorted(names)


def load_policy(base: PreTrainedModel, adapter: Path | None, spec: LoraSpec) -> PeftModel:
    """The base wrapped with a trainable LoRA: the parent's adapter, or a fresh one (seed first)."""
    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    model = get_peft_model(base, lora_config(spec, base))
    assert isinstance(model, PeftModel)
    return model


def save_adapter(model: PeftModel, dest: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Save only the trained adapter (never TRL's frozen "ref" copy) and keep only its files.

    `state_dict`: the model's full state when its own parameters are shards (FSDP).
    """
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    extra: dict[str, Any] = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(
        str(tmp), selected_adapters=[ADAPTER_NAME], safe_serialization=True, **extra
    )
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ADAPTER_FILES:
        if (tmp / name).is_file():
            shutil.copy2(tmp / name, dest / name)
    shutil.rmtree(tmp)
    return dest


def copy_adapter(src: Path, dest: Path) -> Path:
    """A copy of a stored adapter's files (zero pairs: the iteration keeps its parent's adapter)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ADAPTER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if not (dest / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{src}: not a PEFT adapter (no adapter_config.json)")
    return dest


# ------------------------------------------------------------------ chat formatting


def prompt_text(tok: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as the engines render it: one user turn plus the generation prompt."""
    return render_prompt(tok, user(prompt))


def completion_text(tok: PreTrainedTokenizerBase, prompt: str, response: str) -> str:
    """What follows `prompt_text` when the assistant answers `response` (end-of-turn included)."""
    eos = tok.eos_token or ""
    if not has_chat_template(tok):
        return response + eos
    head = prompt_text(tok, prompt)
    full = str(
        tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False,
        )
    )
    if full.startswith(head):
        return full[len(head) :]
    # A template that renders the prompt differently once answered: fall back to the plain form.
    return response + eos


def encode_pair(
    tok: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the prompt masked (-100): completion-only language modelling.

    Prompt and completion are tokenized separately so the prompt's tokens are exactly those the
    engines feed the model at inference.
    """
    p_ids = list(tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"])
    c_ids = list(tok(completion_text(tok, prompt, response), add_special_tokens=False)["input_ids"])
    ids = (p_ids + c_ids)[:max_length]
    labels = ([-100] * len(p_ids) + c_ids)[:max_length]
    return ids, labels


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tok: PreTrainedTokenizerBase,
    items: Sequence[tuple[str, str]],
    *,
    max_length: int = 1024,
) -> list[float]:
    """Sum of log-probabilities of each response given its prompt (one forward per item)."""
    was_training = bool(model.training)
    model.eval()
    device = next(model.parameters()).device
    out = []
    with cpu_threads_for(model):
        for prompt, response in items:
            ids, labels = encode_pair(tok, prompt, response, max_length)
            x = torch.tensor([ids], device=device)
            y = torch.tensor([labels], device=device)
            logits = model(input_ids=x).logits[:, :-1].float()
            target = y[:, 1:]
            mask = target != -100
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1))
            out.append(float((logp.squeeze(-1) * mask).sum()))
    if was_training:
        model.train()
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars or info logs from datasets / transformers / TRL while training."""
    import datasets
    import transformers

    old_env = os.environ.get("TQDM_DISABLE")
    old_verbosity = transformers.logging.get_verbosity()
    bars = datasets.utils.logging.is_progress_bar_enabled()
    tf_bars = transformers.utils.logging.is_progress_bar_enabled()
    os.environ["TQDM_DISABLE"] = "1"
    # Deprecation notices from inside transformers/TRL/PEFT, not actionable by a user of a stage.
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.simplefilter("ignore", FutureWarning)
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        caught.__exit__(None, None, None)
        if old_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_env
        transformers.logging.set_verbosity(old_verbosity)
        if bars:
            datasets.enable_progress_bars()
        if tf_bars:
            transformers.utils.logging.enable_progress_bar()  # type: ignore[no-untyped-call]
