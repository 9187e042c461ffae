"""Pure parts of the training: rows per loss kind, MODPO margins, BFPO targets, spec checks."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from trainutil import pair

from selfmoa.api.spec import TRL_LOSS_TYPES, TrainingSpec
from selfmoa.training.objectives import bfpo_row, build_rows, modpo_margin, trl_loss

W = {"safety": 0.6, "helpfulness": 0.4}


@pytest.mark.parametrize(
    ("cs", "ch", "rs", "rh", "swap", "g"),
    [
        # chosen more helpful: order kept; g = 1.5 s(hw) - 0.5 s(hl) - 0.5
        (5, 4, 5, 2, False, 0.5),  # both safe
        (5, 4, 1, 2, False, 1.0),  # loser unsafe
        (1, 4, 5, 2, False, -1.0),  # winner unsafe: a safe, less helpful answer is preferred
        (1, 4, 1, 2, False, -0.5),  # both unsafe: the less helpful one is preferred
        # rejected more helpful: the pair is re-ordered by helpfulness
        (5, 1, 1, 5, True, -1.0),  # safe refusal vs helpful unsafe answer
        (5, 1, 5, 5, True, 0.5),
        (5, 3, 1, 3, False, 1.0),  # a tie keeps the pair's order
    ],
)
def test_bfpo_orders_by_helpfulness_and_targets_by_safety(
    cs: float, ch: float, rs: float, rh: float, swap: bool, g: float
) -> None:
    p = pair("q", "A", "B", cs=cs, ch=ch, rs=rs, rh=rh)
    row = bfpo_row(p, threshold=3.0)
    assert (row.chosen, row.rejected) == (("B", "A") if swap else ("A", "B"))
    assert row.margin == pytest.approx(g - 0.5)


def test_bfpo_missing_safety_counts_as_unsafe() -> None:
    p = pair("q", "A", "B", ch=4, rs=5, rh=2)
    p["chosen_scores"]["safety"] = None
    # Treated as (unsafe winner, safe loser): g = -1.
    assert bfpo_row(p, threshold=3.0).margin == pytest.approx(-1.0 - 0.5)


def test_modpo_margin_is_weighted_helpfulness_difference() -> None:
    p = pair("q", "A", "B", ch=5, rh=2)
    assert modpo_margin(p, W, 1.0) == pytest.approx(0.4 / 0.6 * 3)
    assert modpo_margin(p, W, 0.5) == pytest.approx(0.5 * 0.4 / 0.6 * 3)
    assert modpo_margin(p, {"safety": 0.0, "helpfulness": 1.0}, 1.0) == 0.0
    p["rejected_scores"]["helpfulness"] = None
    assert modpo_margin(p, W, 1.0) == 0.0


def test_build_rows_per_kind() -> None:
    pairs = [pair("q", "A", "B", ch=1, rh=4)]
    dpo = build_rows(pairs, TrainingSpec(loss="dpo"), weights=W, threshold=3)
    assert [(r.chosen, r.rejected, r.margin) for r in dpo] == [("A", "B", 0.0)]
    modpo = build_rows(pairs, TrainingSpec(loss="modpo"), weights=W, threshold=3)
    assert modpo[0].margin == pytest.approx(0.4 / 0.6 * -3)
    bfpo = build_rows(pairs, TrainingSpec(loss="bfpo"), weights=W, threshold=3)
    assert (bfpo[0].chosen, bfpo[0].rejected) == ("B", "A")


def test_trl_loss_per_kind() -> None:
    assert trl_loss(TrainingSpec(loss="dpo")) == (["sigmoid"], None)
    assert trl_loss(TrainingSpec(loss="modpo")) == (["sigmoid"], None)
    assert trl_loss(TrainingSpec(loss="bfpo")) == (["ipo"], None)
    w = TrainingSpec(loss="weighted", lossTypes=["sigmoid", "sft"], lossWeights=[1.0, 0.2])
    assert trl_loss(w) == (["sigmoid", "sft"], [1.0, 0.2])


def test_spec_refuses_a_loss_type_trl_does_not_have() -> None:
    with pytest.raises(ValidationError, match="lossTypes: unsupported"):
        TrainingSpec(loss="weighted", lossTypes=["sigmoid", "dpo-but-better"])
    with pytest.raises(ValidationError, match="loss"):
        TrainingSpec.model_validate({"loss": "kto"})


def test_spec_loss_types_are_all_known_to_trl() -> None:
    from trl import DPOConfig

    documented = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    names = set(re.findall(r"`'([a-z_]+)'`", documented))
    assert names, documented
    assert set(TRL_LOSS_TYPES) <= names
