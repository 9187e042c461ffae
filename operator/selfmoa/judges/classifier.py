"""A sequence-classification model (a reward model or a safety classifier) as a judge.

- One output (a reward model): logits have no fixed scale, so they are min-max normalized over
  the items of one `score_batch` call to 1..5 (all equal -> 3). The scores rank responses within
  the call; a judge stage scores one iteration's responses in one call.
- Several outputs (a graded or a binary classifier): softmax, then the expected value of the
  labels' positions on 1..5 (label i of n is worth 1 + 4i/(n-1)). For two labels, names that say
  which side is bad ("unsafe", "toxic", "harmful", ...) put that label at 1 whatever its index.

transformers and torch are imported when the judge first scores, never at import time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfmoa.api.spec import JudgeKind, Objective
from selfmoa.judges.base import Judge, JudgeProgress, clamp
from selfmoa.run.records import ResponseRecord

_BAD_LABEL = re.compile(r"unsafe|toxic|harm|negative|bad|reject|flag", re.IGNORECASE)


def label_values(id2label: dict[int, str], n: int) -> list[float]:
    """The 1..5 value of each output label."""
    if n == 2:
        names = [str(id2label.get(i, "")) for i in range(2)]
        bad = [bool(_BAD_LABEL.search(name)) for name in names]
        if bad == [False, True]:
            return [5.0, 1.0]
    return [1.0 + 4.0 * i / (n - 1) for i in range(n)]


def minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return [3.0 for _ in values]
    return [1.0 + 4.0 * (v - lo) / (hi - lo) for v in values]


class ClassifierJudge(Judge):
    kind = JudgeKind.classifier

    def __init__(
        self,
        name: str,
        objective: Objective,
        path: Path,
        *,
        weight: float = 1.0,
        batch_size: int = 16,
        max_length: int = 1024,
    ) -> None:
        super().__init__(name, objective, weight=weight)
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification

        from selfmoa.models.chat import load_tokenizer

        tok = load_tokenizer(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(str(self.path))
        # Batched classification finds each row's last real token through the pad id.
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        model.eval()
        self._model, self._tokenizer = model, tok

    def _text(self, item: ResponseRecord) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            msgs = [
                {"role": "user", "content": item["prompt"]},
                {"role": "assistant", "content": item["text"]},
            ]
            text: str = tok.apply_chat_template(msgs, tokenize=False)
            return text
        return f"{item['prompt']}\n\n{item['text']}"

    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        if not items:
            return []
        self._load()
        import torch

        model, tok = self._model, self._tokenizer
        n_labels = int(model.config.num_labels)
        values = label_values(dict(model.config.id2label or {}), n_labels) if n_labels > 1 else []
        raw: list[float] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            enc = tok(
                [self._text(it) for it in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            enc.pop("token_type_ids", None)
            # no_grad, not set_grad_enabled: a local run trains in this same process later.
            with torch.no_grad():
                logits = model(**enc).logits.float()
            if n_labels == 1:
                raw += [float(x) for x in logits[:, 0]]
            else:
                probs = torch.softmax(logits, dim=-1)
                weights = torch.tensor(values, dtype=probs.dtype)
                raw += [float(x) for x in (probs * weights).sum(-1)]
            if progress is not None:
                progress(min(start + self.batch_size, len(items)))
        scores = minmax(raw) if n_labels == 1 else [clamp(x) for x in raw]
        out: list[float | None] = list(scores)
        return out
