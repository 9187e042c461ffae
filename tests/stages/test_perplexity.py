"""Teacher-forced perplexity on reference answers: the whole answer (what the gate reads) and its
body past the opening (reported beside it)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from selfmoa.run.metrics import OPENING_TOKENS
from selfmoa.stages.perplexity import teacher_forced

torch = pytest.importorskip("torch")
VOCAB = 8


class Opener:
    """Uniform over the vocabulary for an answer's first `OPENING_TOKENS` tokens, then sure of
    the next one: a model that can't guess how an answer opens but knows its substance."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any) -> SimpleNamespace:
        ids = input_ids[0]
        logits = torch.zeros(1, len(ids), VOCAB)
        for pos in range(len(ids) - 1):
            answer_pos = pos + 1 - self.prompt_len  # the index, in the answer, of token pos+1
            if answer_pos >= OPENING_TOKENS:
                logits[0, pos, int(ids[pos + 1])] = 50.0
        return SimpleNamespace(logits=logits)


def test_the_body_perplexity_leaves_out_each_answers_opening() -> None:
    prompt, answer = [1, 2, 3], [(i % VOCAB) for i in range(OPENING_TOKENS + 20)]
    ids = prompt + answer
    labels = [-100] * len(prompt) + answer
    got = teacher_forced(Opener(len(prompt)), [(ids, labels), (ids, labels)], "refs")
    assert got is not None and got.tokens == 2 * len(answer)
    share = OPENING_TOKENS / len(answer)
    assert got.perplexity == pytest.approx(math.exp(share * math.log(VOCAB)), rel=1e-3)
    assert got.body_perplexity == pytest.approx(1.0, abs=1e-3)


def test_answers_no_longer_than_the_opening_have_no_body() -> None:
    prompt, answer = [1, 2], [3, 4, 5]
    got = teacher_forced(Opener(2), [(prompt + answer, [-100, -100, *answer])], "short")
    assert got is not None and got.perplexity == pytest.approx(VOCAB, rel=1e-3)
    assert got.body_perplexity is None
