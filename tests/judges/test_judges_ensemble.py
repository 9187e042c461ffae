"""Ensembles (soft / hard / bootstrap) and agreement figures, table-driven."""

from __future__ import annotations

import math

import pytest

from selfmoa.api.spec import EnsembleMethod
from selfmoa.judges.ensemble import Vote, agreement, agreement_rate, cohen_kappa, combine

S, H, B = EnsembleMethod.soft, EnsembleMethod.hard, EnsembleMethod.bootstrap


@pytest.mark.parametrize(
    ("method", "votes", "score", "label"),
    [
        # soft: weighted mean of the available scores
        (S, [(5, 1), (1, 1)], 3.0, True),
        (S, [(5, 3), (1, 1)], 4.0, True),
        (S, [(5, 1), (None, 1), (1, 1)], 3.0, True),
        (S, [(2, 1), (None, 5)], 2.0, False),
        (S, [(4, 1), (4, 1), (4, 1)], 4.0, True),
        # hard: weighted majority of labels; score = mean of the majority side
        (H, [(5, 1), (4, 1), (1, 1)], 4.5, True),
        (H, [(5, 1), (2, 1), (1, 1)], 1.5, False),
        (H, [(5, 1), (2, 3)], 2.0, False),  # the heavier judge wins
        (H, [(5, 1), (None, 1), (1, 1), (2, 1)], 1.5, False),
        # ties go to the soft score's side
        (H, [(5, 1), (2, 1)], 5.0, True),  # soft 3.5 >= 3
        (H, [(3, 1), (1, 1)], 1.0, False),  # soft 2.0 < 3
    ],
)
def test_combine_table(
    method: EnsembleMethod, votes: list[tuple[float | None, float]], score: float, label: bool
) -> None:
    c = combine([Vote(s, w) for s, w in votes], method, threshold=3.0)
    assert c.score == pytest.approx(score)
    assert c.label is label
    assert c.spread is not None and c.spread >= 0


@pytest.mark.parametrize("method", [S, H, B])
def test_all_none_is_none(method: EnsembleMethod) -> None:
    c = combine([Vote(None), Vote(None, 2.0)], method, key="r1")
    assert (c.score, c.label, c.spread) == (None, None, None)
    assert combine([], method).score is None


def test_soft_spread_is_weighted_std() -> None:
    c = combine([Vote(5.0), Vote(1.0)], S)
    assert c.spread == pytest.approx(2.0)
    assert combine([Vote(3.0)], S).spread == 0.0


def test_threshold_moves_the_label() -> None:
    votes = [Vote(3.5), Vote(3.5)]
    assert combine(votes, S, threshold=3.0).label is True
    assert combine(votes, S, threshold=4.0).label is False
    assert combine(votes, H, threshold=4.0).label is False


def test_bootstrap_is_deterministic_per_key_and_spreads() -> None:
    votes = [Vote(5.0), Vote(1.0), Vote(4.0), Vote(2.0, 2.0)]
    a = combine(votes, B, bootstrap_samples=300, key="p1#0:safety")
    b = combine(votes, B, bootstrap_samples=300, key="p1#0:safety")
    c = combine(votes, B, bootstrap_samples=300, key="p1#1:safety")
    assert a == b
    assert a != c
    soft = combine(votes, S).score
    assert a.score is not None and soft is not None
    assert a.score == pytest.approx(soft, abs=0.25)
    assert a.spread is not None and 0.3 < a.spread < 1.5
    # Unanimous judges: no spread at all.
    u = combine([Vote(4.0), Vote(4.0)], B, key="x")
    assert u.score == pytest.approx(4.0) and u.spread == pytest.approx(0.0)


def test_bootstrap_default_samples_is_200() -> None:
    votes = [Vote(5.0), Vote(1.0)]
    assert combine(votes, B, key="k") == combine(votes, B, bootstrap_samples=200, key="k")
    assert combine(votes, B, key="k") != combine(votes, B, bootstrap_samples=50, key="k")


def test_zero_weight_votes_are_ignored() -> None:
    assert combine([Vote(1.0, 0.0), Vote(5.0)], S).score == 5.0


def test_agreement_rate_and_kappa() -> None:
    a = [True, True, False, False, None]
    b = [True, False, False, False, True]
    rate, n = agreement_rate(a, b)
    assert (rate, n) == (0.75, 4)
    # po = 0.75, pa = 0.5, pb = 0.25, pe = 0.5 -> kappa = 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.5)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
    assert cohen_kappa([None], [True]) is None
    assert agreement_rate([None], [True]) == (None, 0)


def test_agreement_summary_shape() -> None:
    labels: dict[str, list[bool | None]] = {
        "j1": [True, False, True],
        "j2": [True, True, None],
        "j3": [False, False, True],
    }
    ens = [True, False, True]
    out = agreement(labels, ens)
    assert out["with_ensemble"] == {"j1": 1.0, "j2": 0.5, "j3": pytest.approx(2 / 3, abs=1e-4)}
    pairs = out["pairs"]
    assert isinstance(pairs, list)
    assert [(p["a"], p["b"], p["n"]) for p in pairs] == [
        ("j1", "j2", 2),
        ("j1", "j3", 3),
        ("j2", "j3", 2),
    ]
    assert all(p["kappa"] is None or -1 <= p["kappa"] <= 1 for p in pairs)
    assert not math.isnan(pairs[1]["agreement"])
