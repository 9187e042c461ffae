"""`Nucleus` keeps the tokens transformers' temperature and top-p warpers keep, by a partial
search; the whole sort only where the candidates hold too little mass."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from selfmoa.engines.nucleus import Nucleus


def _transformers(x: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    scaled = TemperatureLogitsWarper(temperature)(None, x) if temperature != 1.0 else x  # type: ignore[arg-type]
    return TopPLogitsWarper(top_p)(None, scaled)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(1.0, 0.95), (0.8, 0.95), (0.7, 0.5), (1.3, 0.9)]
)
@pytest.mark.parametrize("candidates", [64, 4])  # 4: most rows take the whole-sort path
@pytest.mark.parametrize("scale", [1.0, 4.0, 12.0])  # flat to peaked distributions
def test_keeps_what_transformers_keeps(
    temperature: float, top_p: float, candidates: int, scale: float
) -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 1024) * scale
    theirs = _transformers(x, temperature, top_p)
    ours = Nucleus(temperature, top_p, candidates=candidates)(None, x)  # type: ignore[arg-type]
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    assert torch.equal(ours[kept], theirs[kept])  # the kept scores, temperature applied
    assert bool(kept.any(dim=-1).all())


def test_top_p_one_only_scales() -> None:
    x = torch.randn(4, 32)
    assert torch.equal(Nucleus(1.0, 1.0)(None, x), x)  # type: ignore[arg-type]
    assert torch.equal(Nucleus(0.5, 1.0)(None, x), x / 0.5)  # type: ignore[arg-type]
    # One dominant token: it alone is kept, whatever top_p.
    peaked = torch.tensor([[20.0, 0.0, 0.0, 0.0]])
    assert torch.isinf(Nucleus(1.0, 0.9)(None, peaked)).tolist() == [[False, True, True, True]]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nucleus"):
        Nucleus(0.0, 0.9)
