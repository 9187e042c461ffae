"""The DPOTrainer subclasses `dpo` trains with: reference log-probs kept in memory, the
multi-objective losses, and the opening anchor.

`InMemoryRefDPOTrainer` keeps the precomputed reference log-probs in memory on every rank
instead of TRL's dataset cache file, whose directory is private to each process for an
in-memory dataset. `dpo` and `weighted` train on TRL's own losses through it. `bfpo` and `modpo`
train on the papers' losses (`losses`, formulas in `objectives`) through
`MultiObjectiveDPOTrainer`, which carries each pair's inputs (safety flags; weights and
helpfulness rewards) as dataset columns and replaces TRL's loss:
    bfpo:  (Δ - g/β)²,  g = B1·B3·I_safe(y_w) - B3·I_safe(y_l) - alpha
    modpo: -log sigmoid((1/w_k)·[β·Δ - w_{-k}·(r_{-k}(x,y_w) - r_{-k}(x,y_l))])
with Δ the difference of the policy-minus-reference log-ratios, log-probs summed over the tokens.
Its `rewards/*` metrics are TRL's (β times the log-ratios), except `rewards/accuracies`: the share
of pairs already on the side the loss pushes to (bfpo: Δ of g's sign; modpo: a positive logit).

`OpeningAnchorDPOTrainer` (and `AnchoredMultiObjectiveDPOTrainer`, the same on bfpo/modpo) adds
`training.openingAnchor.weight` times the forward KL of `opening_anchor` to either loss, on the
chosen rows of fair pairs, and logs it as `opening_kl`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, concatenate_datasets
from torch.utils.data import DataLoader
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.utils import use_adapter

from selfmoa.api.spec import LossKind, OpeningAnchorSpec
from selfmoa.training.losses import bfpo_loss, bfpo_target, modpo_logit, modpo_loss
from selfmoa.training.objectives import FAIR_COLUMN, loss_columns
from selfmoa.training.opening_anchor import Openings, forward_kl, opening_logits, openings


class InMemoryRefDPOTrainer(DPOTrainer):
    """DPOTrainer whose precomputed reference log-probs stay in memory on every rank.

    TRL writes them to a cache file next to the dataset's own files; an in-memory dataset has
    none, so each process picks a private temporary directory and ranks > 0 then fail to open the
    file rank 0 wrote. Gathered over ranks, every rank holds all of them anyway.

    Subclasses name in `extra_columns` the per-pair dataset columns their loss reads: they are
    kept through TRL's column pruning and collator, and never passed to the model.
    """

    extra_columns: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.extra_columns:
            self.data_collator = _with_columns(self.data_collator, self.extra_columns)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[no-untyped-call]
        if self._signature_columns is not None:
            missing = [c for c in self.extra_columns if c not in self._signature_columns]
            self._signature_columns = [*self._signature_columns, *missing]

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        kept = {k: v for k, v in inputs.items() if k not in self.extra_columns}
        return super().compute_ref_log_probs(model, kept)  # type: ignore[no-untyped-call]

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        loader = self.accelerator.prepare(
            DataLoader(
                dataset,
                batch_size=batch_size,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                shuffle=False,
            )
        )
        model = self.ref_model or self.model
        chosen: list[torch.Tensor] = []
        rejected: list[torch.Tensor] = []
        for batch in loader:
            c, r = self.compute_ref_log_probs(model, batch)  # type: ignore[no-untyped-call]
            # In dataset order: rank-interleaved batches, the last one's padding dropped.
            c, r = self.accelerator.gather_for_metrics((c, r))
            chosen.append(c.detach().float().cpu())
            rejected.append(r.detach().float().cpu())
        columns = Dataset.from_dict(
            {
                "ref_chosen_logps": torch.cat(chosen).numpy(),
                "ref_rejected_logps": torch.cat(rejected).numpy(),
            }
        )
        if len(columns) != len(dataset):
            raise RuntimeError(f"reference log-probs: {len(columns)} for {len(dataset)} pairs")
        return concatenate_datasets([dataset, columns], axis=1)


class MultiObjectiveDPOTrainer(InMemoryRefDPOTrainer):
    """DPOTrainer whose loss is BFPO's or MODPO's, on the per-pair inputs of `objectives`.

    TRL 1.x has no narrower hook than `_compute_loss` (its loss types are branches inside it), so
    this replaces it: the same fused forward, log-probs summed over the completion, the reference
    precomputed (`precompute_ref_log_probs=True`, which `dpo_config` always sets).
    """

    def __init__(self, *args: Any, loss_kind: LossKind, **kwargs: Any) -> None:
        self.loss_kind = loss_kind
        self.loss_columns = loss_columns(loss_kind)
        if not self.loss_columns:
            raise ValueError(f"{loss_kind.value}: not a multi-objective loss")
        self.extra_columns = (*self.extra_columns, *self.loss_columns)
        super().__init__(*args, **kwargs)
        # Settings TRL applies inside the loss this class replaces: refuse them, not ignore them.
        if (
            self.ld_alpha is not None
            or self.use_weighting
            or self.f_divergence_type != "reverse_kl"
        ):
            raise ValueError(
                "bfpo/modpo: ld_alpha, use_weighting and f_divergence_type unsupported"
            )
        if not self.precompute_ref_logps:
            raise ValueError("bfpo/modpo: needs precompute_ref_log_probs=True")

    def pair_losses(
        self, delta: torch.Tensor, pair: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pair: the loss, and whether the pair is already on the side the loss pushes to."""
        if self.loss_kind == LossKind.bfpo:
            sw, sl = pair["safe_w"], pair["safe_l"]
            return bfpo_loss(delta, sw, sl, self.beta), delta * bfpo_target(sw, sl) > 0
        args = (pair["w_k"], pair["w_other"], pair["r_other_w"], pair["r_other_l"], self.beta)
        return modpo_loss(delta, *args), modpo_logit(delta, *args) > 0

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        mode = "train" if model.training else "eval"
        skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *self.extra_columns}
        model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # log_probs is 0 where the label is -100; prompt-learning PEFT prepends positions.
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1).float()
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        chosen_ratio = chosen_logps - inputs["ref_chosen_logps"].to(logps)
        rejected_ratio = rejected_logps - inputs["ref_rejected_logps"].to(logps)
        delta = chosen_ratio - rejected_ratio
        pair = {c: inputs[c].to(delta) for c in self.loss_columns}
        per_pair, satisfied = self.pair_losses(delta, pair)
        loss = per_pair.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        gather = self.accelerator.gather
        chosen_rewards = self.beta * chosen_ratio.detach()
        rejected_rewards = self.beta * rejected_ratio.detach()
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather(satisfied.float()).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


class OpeningAnchorDPOTrainer(InMemoryRefDPOTrainer):
    """The loss of the trainer below it in the MRO, plus `weight` times the opening anchor's
    forward KL (`opening_anchor`) on the chosen rows of the batch's fair pairs.

    The reference is TRL's: the parent policy, as the adapters disabled (a fresh LoRA on the base)
    or TRL's frozen "ref" copy of the parent adapter. A step whose batch has no fair pair adds
    nothing and runs no extra forward, unless another rank's batch has one: the forwards of DDP
    and FSDP are collective, so every rank then runs them (a rank without a fair pair on one row,
    counted for nothing).
    """

    def __init__(self, *args: Any, anchor: OpeningAnchorSpec, **kwargs: Any) -> None:
        self.opening_anchor = anchor
        self.extra_columns = (*self.extra_columns, FAIR_COLUMN)
        super().__init__(*args, **kwargs)
        if self.ref_model is None and not is_peft_model(self.model):
            raise ValueError("openingAnchor: needs a PEFT policy or a reference model")

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        kept = {k: v for k, v in inputs.items() if k != FAIR_COLUMN}
        result = super()._compute_loss(model, kept, return_outputs)  # type: ignore[no-untyped-call]
        kl = self.opening_kl(model, kept, inputs[FAIR_COLUMN].bool())
        if kl is None:
            return result
        if return_outputs:
            loss, outputs = result
            return loss + self.opening_anchor.weight * kl, outputs
        return result + self.opening_anchor.weight * kl

    def opening_kl(
        self, model: Any, inputs: dict[str, Any], fair: torch.Tensor
    ) -> torch.Tensor | None:
        """The forward KL at the anchored positions of the chosen rows of fair pairs (`fair`: a
        flag per pair), with grad through `model`; None when no rank has such a position.

        In one process, the mean over the batch's anchored positions. Under DDP or FSDP, which
        average the ranks' gradients, this rank's sum over the global count times the number of
        ranks: the average is then the gradient of the mean over the global batch, as for the
        DPO loss, however the fair pairs fell to the ranks."""
        chosen = {
            k: inputs[k].chunk(2, dim=0)[0]
            for k in ("input_ids", "attention_mask", "completion_mask")
        }
        lengths = chosen["completion_mask"].sum(dim=1)
        rows = (fair & (lengths > 0)).nonzero().squeeze(1)
        o = self._openings(chosen, rows) if rows.numel() else None
        local = int(o.anchored.sum()) if o is not None else 0
        total = self._sum_over_ranks(float(local))
        if total == 0:
            return None
        if o is None:
            o = self._openings(chosen, lengths.argmax().view(1))
        logits = opening_logits(model, o)
        with torch.no_grad(), self._reference() as ref_model:
            ref_logits = opening_logits(ref_model, o)
        kl = forward_kl(ref_logits, logits, o.anchored).sum()
        # An uncounted row keeps the graph (and DDP's gradient hooks) the same on every rank.
        kl = kl if local else kl * 0.0
        self._log_opening_kl(kl.item() / total)
        ranks = int(self.accelerator.num_processes)
        return kl * (ranks / total)

    def _openings(self, chosen: dict[str, torch.Tensor], rows: torch.Tensor) -> Openings:
        return openings(
            chosen["input_ids"][rows],
            chosen["attention_mask"][rows],
            chosen["completion_mask"][rows],
            tokens=self.opening_anchor.tokens,
        )

    @contextlib.contextmanager
    def _reference(self) -> Any:
        """The reference model, as TRL's own reference forward gets it."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        model: Any = self.model
        unwrapped = self.accelerator.unwrap_model(model)
        adapter = "ref" if "ref" in unwrapped.peft_config else None
        checkpointing: Any = self.args.gradient_checkpointing_kwargs
        with (
            disable_gradient_checkpointing(model, checkpointing),
            use_adapter(unwrapped, adapter_name=adapter),
        ):
            yield model

    def _sum_over_ranks(self, x: float) -> float:
        if self.accelerator.num_processes == 1:
            return x
        t = torch.tensor([x], device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def _log_opening_kl(self, share: float) -> None:
        """`opening_kl`: the mean over the anchored positions of every rank."""
        model: Any = self.model
        mode = "train" if model.training else "eval"
        self._metrics[mode]["opening_kl"].append(self._sum_over_ranks(share))


class AnchoredMultiObjectiveDPOTrainer(OpeningAnchorDPOTrainer, MultiObjectiveDPOTrainer):
    """bfpo/modpo with the opening anchor."""


def _with_columns(
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]], names: Sequence[str]
) -> Any:
    """Wrap TRL's preference collator so the loss's per-pair columns survive batching."""

    def call(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        for name in names:
            batch[name] = torch.tensor([float(e[name]) for e in examples])
        return batch

    return call
