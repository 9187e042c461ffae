"""The classifier judge on a tiny randomly initialized Qwen2 sequence classifier (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from judge_helpers import response

from selfmoa.api.spec import AlignmentRunSpec, Objective
from selfmoa.engines.provider import EngineProvider
from selfmoa.judges import build_judges
from selfmoa.judges.classifier import ClassifierJudge, label_values, minmax

CORPUS = [
    "I can't help with that request.",
    "Sure, here is how to do it. Step 1: get the parts.",
    "Here is a simple way to bake bread at home.",
    "How do I make a pipe bomb? How do I bake bread?",
] * 4


def _tiny_classifier(path: Path, num_labels: int, id2label: dict[int, str] | None = None) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"]),
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(path)
    config = Qwen2Config(  # type: ignore[call-arg]
        vocab_size=fast.vocab_size + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=fast.pad_token_id,
    )
    if id2label:
        config.id2label = id2label
        config.label2id = {v: k for k, v in id2label.items()}
    import torch

    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(path)  # type: ignore[no-untyped-call]
    return path


ITEMS = [
    response("I can't help with that.", rid="a#0"),
    response("Sure, here is how to do it. Step 1: get the parts for it.", rid="a#1"),
    response("Here is a simple way to bake bread.", rid="a#2"),
    response("bread", rid="a#3"),
    response("Step 1: get the parts. Step 2: bake it at home, simple.", rid="a#4"),
]


def test_label_values_and_minmax() -> None:
    assert label_values({}, 5) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert label_values({0: "safe", 1: "unsafe"}, 2) == [5.0, 1.0]
    assert label_values({0: "unsafe", 1: "safe"}, 2) == [1.0, 5.0]
    assert label_values({0: "LABEL_0", 1: "LABEL_1"}, 2) == [1.0, 5.0]
    assert minmax([0.0, 2.0, 1.0]) == [1.0, 5.0, 3.0]
    assert minmax([7.0, 7.0]) == [3.0, 3.0]


@pytest.mark.slow
def test_reward_model_scores_are_minmaxed_and_batching_does_not_change_them(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "rm", 1)
    one = ClassifierJudge("rm", Objective.helpfulness, path, batch_size=1)
    seen: list[int] = []
    scores = one.score_batch(ITEMS, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5]
    assert all(s is not None and 1.0 <= s <= 5.0 for s in scores)
    assert min(s for s in scores if s is not None) == pytest.approx(1.0)
    assert max(s for s in scores if s is not None) == pytest.approx(5.0)
    # Padding in a batch of mixed lengths must not change a response's score.
    batched = ClassifierJudge("rm", Objective.helpfulness, path, batch_size=4).score_batch(ITEMS)
    assert batched == pytest.approx(scores, abs=1e-4)


@pytest.mark.slow
def test_multilabel_classifier_gives_expected_score(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "clf", 5)
    scores = ClassifierJudge("clf", Objective.safety, path).score_batch(ITEMS)
    assert all(s is not None and 1.0 <= s <= 5.0 for s in scores)
    # A random head is close to uniform: the expected score sits near the middle.
    assert all(s is not None and 2.0 < s < 4.0 for s in scores)
    assert len(set(scores)) > 1


@pytest.mark.slow
def test_build_judges_loads_classifier_from_a_local_path(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "bin", 2, {0: "safe", 1: "unsafe"})
    spec = AlignmentRunSpec.model_validate(
        {
            "policy": {"model": "selfmoa/tiny"},
            "judges": [
                {"name": "clf", "objective": "safety", "kind": "classifier", "model": str(path)},
                {"name": "helpful", "objective": "helpfulness"},
            ],
        }
    )
    judge = build_judges(spec, EngineProvider(spec))[0]
    assert isinstance(judge, ClassifierJudge)
    scores = judge.score_batch(ITEMS[:2])
    assert all(s is not None and 1.0 <= s <= 5.0 for s in scores)
