"""The opening anchor (`training.openingAnchor`): the forward KL at the first answer tokens of fair
prompts, its layout of padded batches, the trainer that adds it, and its spec.

The hand computations run every row on its own, unpadded, through the plain forward (full
logits over the whole sequence), against a reference loaded separately from the parent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from trainutil import REFUSAL, UNSAFE, make_spec, pair, random_adapter

from selfmoa.api import SpecError, parse_run
from selfmoa.api.spec import LossKind, TrainingSpec
from selfmoa.models.chat import load_tokenizer
from selfmoa.training import dpo
from selfmoa.training import model as M
from selfmoa.training.dpo_trainers import (
    AnchoredMultiObjectiveDPOTrainer,
    InMemoryRefDPOTrainer,
    MultiObjectiveDPOTrainer,
    OpeningAnchorDPOTrainer,
)
from selfmoa.training.objectives import FAIR_COLUMN, build_rows
from selfmoa.training.opening_anchor import forward_kl, opening_logits, openings

TOKENS = 8
HELPFUL = "Mix flour, water, salt and yeast, then knead and bake the dough."
#: A fair answer shorter than TOKENS (5 tokens with the chat template's end of turn), so that
#: some rows anchor fewer positions.
SHORT = "Paris."

# ------------------------------------------------------------------ the KL and its layout


def _kl_by_hand(ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> float:
    """KL(ref || policy) of one position's logits, in float64."""
    r, p = ref_logits.double().log_softmax(-1), policy_logits.double().log_softmax(-1)
    return float((r.exp() * (r - p)).sum())


def test_forward_kl_by_hand() -> None:
    torch.manual_seed(0)
    ref, pol = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    anchored = torch.tensor([[True, True, True], [True, False, False]])  # row 1: a short answer
    got = forward_kl(ref, pol, anchored)
    expected = [_kl_by_hand(ref[i, k], pol[i, k]) for i, k in [(0, 0), (0, 1), (0, 2), (1, 0)]]
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert forward_kl(ref, ref, anchored).abs().max() < 1e-6
    # Forward, not reverse: KL(ref || pol) != KL(pol || ref) here.
    assert forward_kl(pol, ref, anchored).tolist() != pytest.approx(expected, rel=1e-2)


def _padded(rows: Sequence[tuple[list[int], list[int]]], left: bool) -> dict[str, torch.Tensor]:
    """A batch of (prompt, answer) rows padded with 0 on one side, as TRL's collator marks them."""
    width = max(len(p) + len(a) for p, a in rows)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "completion_mask": []}
    for p, a in rows:
        pad = [0] * (width - len(p) - len(a))
        ids, att, comp = p + a, [1] * (len(p) + len(a)), [0] * len(p) + [1] * len(a)
        for key, v in (("input_ids", ids), ("attention_mask", att), ("completion_mask", comp)):
            out[key].append(pad + v if left else v + pad)
    return {k: torch.tensor(v) for k, v in out.items()}


ROWS = [([11, 12, 13], [21, 22, 23, 24, 25]), ([14], [26]), ([15, 16], [27, 28])]


@pytest.mark.parametrize("left", [False, True])
def test_openings_layout_on_either_padding(left: bool) -> None:
    o = openings(**_padded(ROWS, left), tokens=3)
    # The longest prompt (3) then 3 - 1 answer tokens as inputs; the last 3 columns predict.
    assert o.input_ids[o.attention_mask.bool()].tolist() == [11, 12, 13, 21, 22, 14, 15, 16, 27]
    assert o.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0]]
    real_positions = [
        r[m.bool()].tolist() for r, m in zip(o.position_ids, o.attention_mask, strict=True)
    ]
    assert real_positions == [[0, 1, 2, 3, 4], [0], [0, 1, 2]]
    assert o.anchored.tolist() == [[True] * 3, [True, False, False], [True, True, False]]


def test_opening_logits_match_each_row_alone(tiny_model: Path) -> None:
    model = M.load_base(tiny_model)
    o = openings(**_padded(ROWS, left=False), tokens=3)
    got = opening_logits(model, o)
    assert got.shape[:2] == (3, 3)
    for i, (p, a) in enumerate(ROWS):
        alone = model(input_ids=torch.tensor([p + a])).logits[0]
        n = int(o.anchored[i].sum())
        # Kept column k predicts answer token k: the position before it in the row alone.
        want = alone[len(p) - 1 : len(p) - 1 + n]
        assert torch.allclose(got[i, :n], want, atol=1e-5)


# ------------------------------------------------------------------ the trainer


def _pairs() -> list[dict[str, Any]]:
    """Harmful pairs (refuse) and fair ones (answer), the fair answers of two lengths."""
    out = [pair(f"How do I do bad thing {i}?", REFUSAL, UNSAFE, i=i) for i in range(4)]
    for i in range(4, 8):
        p = pair(f"Tell me about thing {i}.", HELPFUL if i % 2 else SHORT, REFUSAL, i=i)
        out.append(p | {"kind": "benign" if i % 2 else "legit"})
    return out


def _trainer(
    tiny_model: Path, tmp_path: Path, weight: float, parent: Path | None = None, **training: Any
) -> Any:
    spec = make_spec(
        str(tiny_model),
        tmp_path,
        training={"openingAnchor": {"weight": weight, "tokens": TOKENS}, **training},
    )
    rows = build_rows(_pairs(), spec.training, weights=spec.preferences.weights, threshold=3.0)
    tok = load_tokenizer(tiny_model)
    M.set_seed(0)
    base = M.load_base(tiny_model)
    return dpo._trainer(base, parent, rows, tok, spec.training, tmp_path / f"w{weight}")


def _batch(trainer: Any) -> dict[str, Any]:
    return next(iter(trainer.get_train_dataloader()))


def _hand_opening_kl(policy: Any, reference: Any, batch: dict[str, Any], tokens: int) -> float:
    """The mean KL(ref || policy) over the first `tokens` answer positions of the chosen rows of
    fair pairs, each row alone and unpadded, in float64."""
    n_pairs = len(batch[FAIR_COLUMN])
    kls: list[float] = []
    lengths: list[int] = []
    for i in range(n_pairs):
        if not batch[FAIR_COLUMN][i]:
            continue
        real = batch["attention_mask"][i].bool()
        ids, answer = batch["input_ids"][i][real], batch["completion_mask"][i][real]
        start, n = int(answer.nonzero()[0]), min(int(answer.sum()), tokens)
        lengths.append(n)
        with torch.no_grad():
            p = policy(input_ids=ids[None]).logits[0]
            r = reference(input_ids=ids[None]).logits[0]
        kls += [_kl_by_hand(r[pos], p[pos]) for pos in range(start - 1, start - 1 + n)]
    # Several fair rows, some shorter than `tokens`.
    assert len(lengths) > 1 and min(lengths) < tokens == max(lengths), lengths
    return sum(kls) / len(kls)


def _perturb_adapter(model: Any) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and ".default." in name:
                p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "bfpo"])
def test_fresh_lora_starts_at_zero_with_the_plain_loss(
    tiny_model: Path, tmp_path: Path, loss: str
) -> None:
    anchored = _trainer(tiny_model, tmp_path, 2.0, loss=loss)
    plain = _trainer(tiny_model, tmp_path, 0.0, loss=loss)
    own = loss == "bfpo"
    assert type(anchored) is (AnchoredMultiObjectiveDPOTrainer if own else OpeningAnchorDPOTrainer)
    assert type(plain) is (MultiObjectiveDPOTrainer if own else InMemoryRefDPOTrainer)
    assert FAIR_COLUMN not in plain.train_dataset.column_names
    batch, plain_batch = _batch(anchored), _batch(plain)
    assert FAIR_COLUMN not in plain_batch
    assert set(batch[FAIR_COLUMN].tolist()) == {0.0, 1.0}
    assert torch.equal(batch["input_ids"], plain_batch["input_ids"])

    kl = anchored.opening_kl(anchored.model, batch, batch[FAIR_COLUMN].bool())
    assert kl is not None and abs(kl.item()) < 1e-6
    got = anchored.compute_loss(anchored.model, batch)
    want = plain.compute_loss(plain.model, plain_batch)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    # Logged once per call: `opening_kl` above, then the loss's.
    assert anchored._metrics["train"]["opening_kl"] == [pytest.approx(0.0, abs=1e-6)] * 2
    assert "opening_kl" not in plain._metrics["train"]


@pytest.mark.slow
def test_moved_policy_pays_the_kl_to_the_base_and_gets_its_gradient(
    tiny_model: Path, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_model, tmp_path, 2.0)
    batch = _batch(trainer)
    _perturb_adapter(trainer.model)
    fair = batch[FAIR_COLUMN].bool()

    kl = trainer.opening_kl(trainer.model, batch, fair)
    assert kl is not None and kl.item() > 1e-3
    # A fresh LoRA's parent is the base: the reference is the base model, loaded on its own.
    want = _hand_opening_kl(trainer.model, M.load_base(tiny_model), batch, TOKENS)
    assert kl.item() == pytest.approx(want, rel=1e-4)

    kl.backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # The loss is the plain one plus weight times the KL.
    trainer.model.zero_grad()
    kept = {k: v for k, v in batch.items() if k != FAIR_COLUMN}
    plain = super(OpeningAnchorDPOTrainer, trainer)._compute_loss(trainer.model, kept, False)
    total = trainer.compute_loss(trainer.model, batch)
    assert total.item() == pytest.approx(plain.item() + 2.0 * kl.item(), rel=1e-5)

    # A batch without a fair pair adds nothing, and runs no extra forward.
    calls = trainer.model.register_forward_hook(lambda *a: pytest.fail("extra forward"))
    try:
        assert trainer.opening_kl(trainer.model, batch, torch.zeros_like(fair)) is None
    finally:
        calls.remove()


@pytest.mark.slow
def test_continued_adapter_is_anchored_to_the_parent(tiny_model: Path, tmp_path: Path) -> None:
    parent = random_adapter(tiny_model, tmp_path / "parent")
    trainer = _trainer(tiny_model, tmp_path, 2.0, parent=parent)
    assert "ref" in trainer.model.peft_config  # TRL's frozen copy of the parent
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    batch = _batch(trainer)
    fair = batch[FAIR_COLUMN].bool()
    kl = trainer.opening_kl(trainer.model, batch, fair)
    assert kl is not None and abs(kl.item()) < 1e-6
    # The reference forward switched to the "ref" adapter and back.
    assert trainer.model.active_adapter == "default"
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == trainable
    # The parent is far from the base: anchoring to the base would not start at 0.
    base = M.load_base(tiny_model)
    assert _hand_opening_kl(trainer.model, base, batch, TOKENS) > 0.01

    _perturb_adapter(trainer.model)
    kl = trainer.opening_kl(trainer.model, batch, fair)
    assert kl is not None and kl.item() > 1e-3
    parent_policy = M.load_policy(M.load_base(tiny_model), parent, TrainingSpec().lora)
    want = _hand_opening_kl(trainer.model, parent_policy, batch, TOKENS)
    assert kl.item() == pytest.approx(want, rel=1e-4)


def _first_token_kl(adapter: Path, tiny_model: Path, prompts: list[str]) -> float:
    """KL(base || trained) of the first answer token, averaged over `prompts`."""
    tok = load_tokenizer(tiny_model)
    base = M.load_base(tiny_model)
    policy = M.load_policy(M.load_base(tiny_model), adapter, TrainingSpec().lora)
    kls = []
    for prompt in prompts:
        ids = torch.tensor([tok(M.prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            kls.append(
                _kl_by_hand(base(input_ids=ids).logits[0, -1], policy(input_ids=ids).logits[0, -1])
            )
    return sum(kls) / len(kls)


@pytest.mark.slow
def test_training_keeps_fair_openings_closer_to_the_reference(
    tiny_model: Path, tmp_path: Path
) -> None:
    pairs = _pairs()
    fair_prompts = [p["prompt"] for p in pairs if p["kind"] != "harmful"]
    kl: dict[float, float] = {}
    for weight in (0.0, 20.0):
        spec = make_spec(
            str(tiny_model),
            tmp_path,
            training={"epochs": 6, "openingAnchor": {"weight": weight, "tokens": TOKENS}},
        )
        rows = build_rows(pairs, spec.training, weights=spec.preferences.weights, threshold=3.0)
        result = dpo.train_dpo(
            base_path=tiny_model,
            parent_adapter=None,
            rows=rows,
            training=spec.training,
            workdir=tmp_path / f"work-{weight}",
            dest=tmp_path / f"adapter-{weight}",
        )
        assert result.steps == 6
        logged = [e["opening_kl"] for e in result.log if "opening_kl" in e]
        assert len(logged) == (6 if weight else 0)
        kl[weight] = _first_token_kl(result.adapter, tiny_model, fair_prompts)
    assert kl[0.0] > 0.005, kl  # DPO alone moves how fair answers open
    assert kl[20.0] < 0.25 * kl[0.0], kl


# ------------------------------------------------------------------ rows and spec


def test_rows_flag_fair_prompts_for_every_loss_kind() -> None:
    pairs = [pair("q", "A", "B", i=i) | {"kind": k} for i, k in enumerate(("harmful", "benign"))]
    pairs.append(pair("q", "A", "B", i=2) | {"kind": "legit"})
    pairs.append({k: v for k, v in pair("q", "A", "B", i=3).items() if k != "kind"})
    for kind in LossKind:
        rows = build_rows(pairs, TrainingSpec(loss=kind), weights={"safety": 1.0}, threshold=3)
        assert [r.fair for r in rows] == [False, True, True, False], kind
        assert FAIR_COLUMN not in rows[1].columns()
        assert rows[1].columns(fair=True)[FAIR_COLUMN] == 1.0
        assert rows[0].columns(fair=True)[FAIR_COLUMN] == 0.0


def test_spec_default_is_off() -> None:
    assert TrainingSpec().opening_anchor is None and TrainingSpec().anchor is None
    assert "openingAnchor" not in TrainingSpec().wire()
    off = TrainingSpec.model_validate({"openingAnchor": {}})
    assert off.opening_anchor is not None and off.opening_anchor.tokens == 8
    assert off.anchor is None
    on = TrainingSpec.model_validate({"openingAnchor": {"weight": 2.0, "tokens": 8}})
    assert on.anchor is not None and on.anchor.weight == 2.0
    for loss, cls in [
        ("dpo", OpeningAnchorDPOTrainer),
        ("weighted", OpeningAnchorDPOTrainer),
        ("modpo", AnchoredMultiObjectiveDPOTrainer),
    ]:
        assert dpo.trainer_class(on.model_copy(update={"loss": LossKind(loss)})) is cls
        assert dpo.trainer_class(off.model_copy(update={"loss": LossKind(loss)})) is not cls


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        ({"weight": -0.5}, "spec.training.openingAnchor.weight: "),
        ({"weight": 1e9}, "spec.training.openingAnchor.weight: "),
        ({"weight": "2"}, "spec.training.openingAnchor.weight: "),
        ({"tokens": 0}, "spec.training.openingAnchor.tokens: "),
        ({"tokens": 65}, "spec.training.openingAnchor.tokens: "),
        ({"tokens": 2.5}, "spec.training.openingAnchor.tokens: "),
        ({"tokenz": 8}, "spec.training.openingAnchor.tokenz: "),
    ],
)
def test_spec_refuses_bad_anchors_in_one_line(anchor: dict[str, Any], expected: str) -> None:
    doc = {"spec": {"policy": {"model": "selfmoa/tiny"}, "training": {"openingAnchor": anchor}}}
    with pytest.raises(SpecError) as e:
        parse_run(doc)
    line = str(e.value)
    assert line.startswith(expected) and "\n" not in line, line
