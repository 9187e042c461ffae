"""The safety reset (iteration 0, optional): LoRA SFT on compliance data, before the loop.

The paper fine-tunes an aligned model so it forgets its refusals, giving the loop an honest
starting point whose raw behaviour the red team can see. Data: the tiny profile's built-in
compliance set, or `safetyReset.data` (JSONL of {"prompt", "response"}; a local path, file://
or s3:// URI). The adapter is uploaded as `iter-000/reset/adapter`, which the train stage of
iteration 1 continues from.
"""

from __future__ import annotations

from typing import Any

from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec
from selfmoa.run import layout
from selfmoa.stages.base import StageContext, StageError, StageOutput, read_jsonl_source

TRAIN_LOG = "train_log.json"


def load_examples(spec: AlignmentRunSpec) -> list[dict[str, str]]:
    """The compliance examples for the reset: `safetyReset.data`, else the tiny built-ins."""
    source = spec.safety_reset.data
    if source is None:
        if spec.policy.model != TINY_MODEL:
            raise StageError(
                "safetyReset.data: required when the policy is not the built-in tiny model "
                "(a JSONL file of {prompt, response} compliance examples)"
            )
        from selfmoa.tiny.seeds import compliance_examples

        rows: list[dict[str, Any]] = list(compliance_examples())
    else:
        rows = read_jsonl_source(source, spec, field="safetyReset.data")
    out = []
    for i, row in enumerate(rows):
        prompt, response = row.get("prompt"), row.get("response")
        if (
            not isinstance(prompt, str)
            or not isinstance(response, str)
            or not prompt
            or not response
        ):
            raise StageError(
                f"safetyReset.data: row {i} needs non-empty 'prompt' and 'response' strings"
            )
        out.append({"prompt": prompt, "response": response})
    if not out:
        raise StageError("safetyReset.data: no examples")
    return out


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    from selfmoa.training import distributed
    from selfmoa.training.sft import train_sft

    spec = ctx.spec
    examples = load_examples(spec)
    # `serving.device` decides (auto: CUDA when torch sees one); `cuda` without a GPU fails
    # here at once, in one line.
    distributed.use_device(ctx.engines.device())
    result = train_sft(
        base_path=ctx.engines.model_path(spec.policy.model),
        # The reset continues a user-given starting adapter (policy.adapter), if any.
        parent_adapter=ctx.fetch_adapter(None),
        examples=examples,
        steps=spec.safety_reset.steps,
        learning_rate=spec.safety_reset.learning_rate,
        lora=spec.training.lora,
        batch_size=min(spec.training.batch_size, len(examples)),
        max_length=spec.training.max_length,
        seed=spec.training.seed,
        dest=ctx.workdir / "out-reset",
        progress=ctx.progress,
        strategy=distributed.strategy(spec.training),
    )
    out.upload_dir(layout.ADAPTER, result.adapter)
    out.write_json(TRAIN_LOG, [{"step": i + 1, "loss": v} for i, v in enumerate(result.losses)])
    return {
        "examples": result.examples,
        "steps": result.steps,
        "tokens": result.tokens,
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps / result.seconds, 3) if result.seconds > 0 else None,
    }
