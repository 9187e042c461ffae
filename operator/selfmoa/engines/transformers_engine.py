"""In-process generation with transformers (CPU tests, the tiny profile, clusters without GPUs).

Only `engines/provider.py` imports this module, lazily: torch and transformers load with it.
Conversations are rendered with the tokenizer's chat template, padded on the left and generated
in batches, on the CPU (float32) or a GPU (bfloat16 where the GPU supports it) alike. LoRA adapters are local PEFT directories, loaded once each and switched per call;
`adapter=None` runs the base model with every adapter disabled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList

from selfmoa.engines.base import (
    Conversation,
    Engine,
    EngineError,
    Generation,
    ProgressFn,
    SamplingParams,
)
from selfmoa.engines.nucleus import Nucleus
from selfmoa.models.chat import load_tokenizer, render_prompt
from selfmoa.models.threads import cpu_threads_for


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on a GPU that supports it; float32 elsewhere (CPU bf16 is slow, not smaller)."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class TransformersEngine(Engine):
    def __init__(
        self,
        path: Path | str,
        *,
        model: str,
        batch_size: int = 32,
        device: str = "cpu",
        dtype: Any = None,
    ) -> None:
        self.model = model
        self.path = str(path)
        self.batch_size = max(1, batch_size)
        self.device = device
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.dtype = default_dtype(device) if dtype is None else dtype
        base: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype)
        self._base = base.to(device).eval()
        #: The PEFT wrapper around the base, once any adapter was loaded.
        self._peft: Any = None
        #: Adapter directory (resolved) + weights mtime -> adapter name inside the PEFT model.
        self._adapters: dict[str, str] = {}
        #: Generated tokens so far (all calls).
        self.tokens_generated = 0
        eos = self.tokenizer.eos_token_id
        self._eos_ids = {eos} if eos is not None else set()
        gen_eos = getattr(self._base.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            self._eos_ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            self._eos_ids.update(gen_eos)

    # ---------------------------------------------------------------- adapters

    def _adapter_name(self, adapter: str) -> str:
        p = Path(adapter).resolve()
        if not (p / "adapter_config.json").exists():
            raise EngineError(f"adapter {adapter}: no adapter_config.json there")
        weights = sorted(p.glob("adapter_model.*"))
        stamp = ",".join(f"{w.name}:{w.stat().st_mtime_ns}" for w in weights)
        # A retrained adapter written to the same directory is a different adapter.
        key = f"{p}|{stamp}"
        if key not in self._adapters:
            name = "a" + hashlib.sha1(key.encode()).hexdigest()[:12]
            from peft import PeftModel

            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(p), adapter_name=name)
                self._peft.eval()
            else:
                self._peft.load_adapter(str(p), adapter_name=name)
            self._adapters[key] = name
        return self._adapters[key]

    def _model_for(self, adapter: str | None) -> tuple[Any, Any]:
        """(module to generate with, context manager to hold while generating)."""
        import contextlib

        if adapter is None:
            if self._peft is None:
                return self._base, contextlib.nullcontext()
            # The LoRA layers live inside the base now: disable them for a clean base model.
            return self._peft, self._peft.disable_adapter()
        name = self._adapter_name(adapter)
        self._peft.set_adapter(name)
        return self._peft, contextlib.nullcontext()

    # ---------------------------------------------------------------- generation

    def render(self, conversation: Conversation) -> str:
        return render_prompt(self.tokenizer, conversation)

    def context_length(self) -> int | None:
        # What vLLM takes as its --max-model-len when none is given.
        n = getattr(self._base.config, "max_position_embeddings", None)
        return int(n) if n else None

    def prompt_tokens(self, conversation: Conversation) -> int:
        ids = self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"]
        return len(ids)

    def _decode(self, row: list[int], stop: tuple[str, ...]) -> Generation:
        cut = len(row)
        finish = "length"
        for i, t in enumerate(row):
            if t in self._eos_ids:
                cut, finish = i, "stop"
                break
        ids = row[:cut]
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop:
            j = text.find(s) if s else -1
            if j >= 0:
                text, finish = text[:j], "stop"
        return Generation(text=text.strip(), tokens=len(ids), finish_reason=finish)

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Generation]]:
        if params.top_logprobs > 0:
            return self._first_tokens(conversations, params, adapter, progress)
        n = max(1, params.n)
        greedy = params.temperature <= 0
        prompts = [self.render(c) for c in conversations]
        # Greedy samples are all the same: generate once and copy. Sampling repeats each prompt
        # n times in a row so the n samples of one prompt share its batch.
        reps = 1 if greedy else n
        flat = [(i, prompts[i]) for i in self._by_length(prompts) for _ in range(reps)]
        results: list[list[Generation]] = [[] for _ in prompts]
        module, hold = self._model_for(adapter)
        done = 0
        with hold, torch.inference_mode(), cpu_threads_for(self._base):
            for b, start in enumerate(range(0, len(flat), self.batch_size)):
                chunk = flat[start : start + self.batch_size]
                rows = self._generate(module, [p for _, p in chunk], params, batch=b)
                for (i, _), g in zip(chunk, rows, strict=True):
                    results[i].append(g)
                finished = len({i for i, _ in chunk if len(results[i]) == reps})
                done += finished
                if progress is not None and finished:
                    progress(done)
        if greedy and n > 1:
            results = [r * n for r in results]
        return results

    def _first_tokens(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        adapter: str | None,
        progress: ProgressFn | None,
    ) -> list[list[Generation]]:
        """One greedy token with the top log-probabilities: one forward pass per batch, the last
        position's distribution, no generation loop."""
        if params.max_new_tokens != 1:
            raise EngineError(
                f"{self.model}: log-probabilities are given for the first token only "
                "(max_new_tokens 1)"
            )
        rows = self._logprob_rows(conversations, params.top_logprobs, adapter, progress)
        return [
            [Generation(max(row, key=row.__getitem__), 1, "length", top_logprobs=row)]
            * max(1, params.n)
            for row in rows
        ]

    def _logprob_rows(
        self,
        conversations: Sequence[Conversation],
        top: int,
        adapter: str | None,
        progress: ProgressFn | None,
    ) -> list[dict[str, float]]:
        prompts = [self.render(c) for c in conversations]
        order = self._by_length(prompts)
        module, hold = self._model_for(adapter)
        rows: dict[int, dict[str, float]] = {}
        with hold, torch.inference_mode(), cpu_threads_for(self._base):
            for start in range(0, len(order), self.batch_size):
                which = order[start : start + self.batch_size]
                chunk = [prompts[i] for i in which]
                enc = self.tokenizer(
                    chunk, return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.device)
                try:
                    logits = module(**enc).logits[:, -1].float()
                except (RuntimeError, ValueError) as e:
                    raise EngineError(f"{self.model}: forward pass failed: {e}") from e
                values, ids = torch.log_softmax(logits, dim=-1).topk(top, dim=-1)
                for i, vs, ts in zip(which, values.tolist(), ids.tolist(), strict=True):
                    row: dict[str, float] = {}
                    for v, t in zip(vs, ts, strict=True):
                        row.setdefault(self.tokenizer.decode([t]), v)
                    rows[i] = row
                if progress is not None:
                    progress(len(rows))
        return [rows[i] for i in range(len(prompts))]

    def _by_length(self, prompts: list[str]) -> list[int]:
        """The prompts' indices, shortest first: a batch is padded to its longest prompt, so
        batching similar lengths together spares the short ones the padding (a jailbreak
        template beside a one-line question made every row of its batch as long as the
        template). Stable, so equal lengths keep their order; callers put results back by index."""
        lengths = [
            len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        ]
        return sorted(range(len(prompts)), key=lengths.__getitem__)

    def _generate(
        self, module: Any, prompts: list[str], params: SamplingParams, *, batch: int
    ) -> list[Generation]:
        """One batch, padded on the left, on the engine's device; one generation per prompt."""
        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self._eos_ids) or None,
        }
        if params.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            # One seed per batch: the same call (same batching) gives the same samples.
            torch.manual_seed(params.seed + batch)
            # Temperature and top-p by `Nucleus` (no full-vocabulary sort per step); generate's
            # own warpers are told to do nothing.
            nucleus = Nucleus(params.temperature, params.top_p)
            kwargs.update(
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                logits_processor=LogitsProcessorList([nucleus]),
            )
        try:
            out = module.generate(**enc, **kwargs)
        except (RuntimeError, ValueError) as e:
            raise EngineError(f"{self.model}: generation failed: {e}") from e
        gens = [
            self._decode(row, params.stop) for row in out[:, enc["input_ids"].shape[1] :].tolist()
        ]
        self.tokens_generated += sum(g.tokens for g in gens)
        return gens

    def close(self) -> None:
        self._adapters.clear()
        self._peft = None
