"""Pure parts of the training: rows per loss kind, MODPO and BFPO per-pair inputs, spec checks."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from trainutil import pair

from selfmoa.api.base import SpecError
from selfmoa.api.spec import TRL_LOSS_TYPES, LossKind, TrainingSpec
from selfmoa.training.objectives import (
    BfpoInputs,
    ModpoInputs,
    bfpo_row,
    build_rows,
    loss_columns,
    modpo_row,
    modpo_weights,
    own_loss,
    trl_loss,
)

W = {"safety": 0.6, "helpfulness": 0.4}


@pytest.mark.parametrize(
    ("cs", "ch", "rs", "rh", "swap", "flags"),
    [
        # chosen more helpful: order kept; flags = (I_safe(y_w), I_safe(y_l)), safe = score >= 3
        (5, 4, 5, 2, False, (1, 1)),
        (5, 4, 1, 2, False, (1, 0)),
        (1, 4, 5, 2, False, (0, 1)),
        (1, 4, 1, 2, False, (0, 0)),
        # rejected more helpful: the pair is re-ordered by helpfulness, flags follow the responses
        (5, 1, 1, 5, True, (0, 1)),  # safe refusal vs helpful unsafe answer: unsafe winner
        (5, 1, 5, 5, True, (1, 1)),
        (5, 3, 1, 3, False, (1, 0)),  # a tie keeps the pair's order
        (3, 4, 2.9, 2, False, (1, 0)),  # the threshold itself is safe
    ],
)
def test_bfpo_orders_by_helpfulness_and_flags_safety(
    cs: float, ch: float, rs: float, rh: float, swap: bool, flags: tuple[int, int]
) -> None:
    p = pair("q", "A", "B", cs=cs, ch=ch, rs=rs, rh=rh)
    row = bfpo_row(p, threshold=3.0)
    assert (row.chosen, row.rejected) == (("B", "A") if swap else ("A", "B"))
    assert row.inputs == BfpoInputs(safe_w=flags[0], safe_l=flags[1])
    assert row.columns() == {"safe_w": flags[0], "safe_l": flags[1]}


def test_bfpo_missing_safety_counts_as_unsafe() -> None:
    p = pair("q", "A", "B", ch=4, rs=5, rh=2)
    p["chosen_scores"]["safety"] = None
    assert bfpo_row(p, threshold=3.0).inputs == BfpoInputs(safe_w=0.0, safe_l=1.0)


def test_modpo_weights_are_normalized_and_need_safety() -> None:
    assert modpo_weights(W) == pytest.approx((0.6, 0.4))
    # 3:1 → w_k = 3/4, w_{-k} = 1/4 (MODPO's weights sum to 1).
    assert modpo_weights({"safety": 3.0, "helpfulness": 1.0}) == pytest.approx((0.75, 0.25))
    assert modpo_weights({"safety": 2.0}) == (1.0, 0.0)
    with pytest.raises(SpecError, match=r"preferences\.weights\.safety > 0"):
        modpo_weights({"safety": 0.0, "helpfulness": 1.0})


def test_modpo_row_carries_weights_and_helpfulness_rewards() -> None:
    p = pair("q", "A", "B", ch=5, rh=2)
    row = modpo_row(p, 0.6, 0.4, 1.0)
    assert (row.chosen, row.rejected) == ("A", "B")  # MODPO keeps the pair's order
    assert row.inputs == ModpoInputs(w_k=0.6, w_other=0.4, r_other_w=5.0, r_other_l=2.0)
    # marginScale scales the margin reward r_{-k}.
    assert modpo_row(p, 0.6, 0.4, 0.5).inputs == ModpoInputs(0.6, 0.4, 2.5, 1.0)
    # A missing helpfulness score drops the margin term.
    p["rejected_scores"]["helpfulness"] = None
    assert modpo_row(p, 0.6, 0.4, 1.0).inputs == ModpoInputs(0.6, 0.4, 0.0, 0.0)


def test_build_rows_per_kind() -> None:
    pairs = [pair("q", "A", "B", ch=1, rh=4)]
    dpo = build_rows(pairs, TrainingSpec(loss="dpo"), weights=W, threshold=3)
    assert [(r.chosen, r.rejected, r.inputs) for r in dpo] == [("A", "B", None)]
    assert dpo[0].columns() == {}
    modpo = build_rows(pairs, TrainingSpec(loss="modpo"), weights=W, threshold=3)
    assert modpo[0].inputs == ModpoInputs(0.6, 0.4, 1.0, 4.0)
    assert set(modpo[0].columns()) == set(loss_columns(LossKind.modpo))
    bfpo = build_rows(pairs, TrainingSpec(loss="bfpo"), weights=W, threshold=3)
    assert (bfpo[0].chosen, bfpo[0].rejected) == ("B", "A")
    assert set(bfpo[0].columns()) == set(loss_columns(LossKind.bfpo)) == {"safe_w", "safe_l"}
    with pytest.raises(SpecError):
        build_rows(pairs, TrainingSpec(loss="modpo"), weights={"helpfulness": 1.0}, threshold=3)


def test_trl_loss_per_kind() -> None:
    assert trl_loss(TrainingSpec(loss="dpo")) == (["sigmoid"], None)
    w = TrainingSpec(loss="weighted", lossTypes=["sigmoid", "sft"], lossWeights=[1.0, 0.2])
    assert trl_loss(w) == (["sigmoid", "sft"], [1.0, 0.2])
    assert [own_loss(TrainingSpec(loss=k)) for k in LossKind] == [
        k in (LossKind.bfpo, LossKind.modpo) for k in LossKind
    ]
    assert loss_columns(LossKind.dpo) == loss_columns(LossKind.weighted) == ()


def test_beta_defaults_per_loss_kind() -> None:
    assert TrainingSpec().beta is None
    assert TrainingSpec().resolved_beta == 0.1
    assert TrainingSpec(loss="modpo").resolved_beta == 0.1
    assert TrainingSpec(loss="bfpo").resolved_beta == 0.01
    assert TrainingSpec(loss="bfpo", beta=0.2).resolved_beta == 0.2
    assert TrainingSpec(beta=0.3).resolved_beta == 0.3
    # An unset beta stays off the wire, so the default is decided where the spec is read.
    assert "beta" not in TrainingSpec(loss="bfpo").wire()
    with pytest.raises(ValidationError, match="greater than 0"):
        TrainingSpec(beta=0)


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
