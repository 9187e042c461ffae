"""Training helpers shared by the `train` (DPO) and `reset` (SFT) stages.

`objectives` is pure Python (how pairs become training rows for each loss kind); `losses` (the
papers' BFPO and MODPO losses), `model`, `dpo` and `sft` import torch / transformers / peft / trl at module level and are only imported by the
stages, inside their `run` functions, so nothing on the CLI's or the operator's import path pays
for them.
"""
