"""Which models a stage loads into its own process, given the spec: what its Pod's device and
memory must be sized for.

With `serving.engine: transformers` every model a stage talks to is loaded in the stage's
process; with vLLM or an OpenAI endpoint only those that no server holds are: classifier and
embedding judges, the policy for the capability measures of `evaluate` (perplexity on reference
answers, lm-eval), and the policy the training stages and a merging export load. A stage with
any of these runs where the training stages run (`trainer.gpus` > 0: one GPU, the train resource
class), so a 7B policy is never loaded into a CPU Pod sized for a stand-in; a merging export
merges on the CPU whatever the GPUs, so it gets the train class's memory and no GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from selfmoa.api.spec import AlignmentRunSpec, Device, JudgeKind, JudgeSpec, ServingEngine
from selfmoa.run import stage_table

#: Judge kinds no server holds: always loaded by the stage that uses them.
_IN_PROCESS_JUDGES = (JudgeKind.classifier, JudgeKind.embedding)


def in_process_models(spec: AlignmentRunSpec, stage: str) -> tuple[str, ...]:
    """The models `stage` loads into its own process (none: it only talks to servers)."""
    definition = stage_table.get(stage)
    if not definition.loads_models:
        return ()
    policy = spec.policy.model
    if definition.trains:
        return (policy,)
    served = spec.serving.engine in (ServingEngine.vllm, ServingEngine.openai)
    out: list[str] = []
    if stage == "redteam" and not served:
        rt = spec.red_team
        if rt.model and rt.model_share > 0:
            out.append(rt.model)
    elif stage == "respond" and not served:
        out.append(policy)
    elif stage == "judge":
        out += _judge_models(spec.judges, served)
    elif stage == "evaluate":
        # The held-out answers are sampled by the policy, and the capability measures load it
        # in-process whatever the serving engine.
        out.append(policy)
        out += _judge_models([*spec.judges, *spec.evaluation.judges], served)
    elif stage == "export" and spec.output is not None and spec.output.merge:
        out.append(policy)
    return tuple(dict.fromkeys(out))


def _judge_models(judges: Sequence[JudgeSpec], served: bool) -> list[str]:
    return [
        j.model
        for j in judges
        if j.model and (j.kind in _IN_PROCESS_JUDGES or (j.kind == JudgeKind.llm and not served))
    ]


def _beside_training(spec: AlignmentRunSpec, stage: str) -> bool:
    """The stage loads a model in-process in a run whose models go on GPUs: it runs where the
    training stages run (their resource class; a GPU unless it loads on the CPU anyway)."""
    if spec.trainer.gpus <= 0 or spec.serving.device == Device.cpu:
        return False
    return bool(in_process_models(spec, stage))


def gpus_for(spec: AlignmentRunSpec, stage: str) -> int:
    """GPUs the stage's Pod asks for: `trainer.gpus` for the training stages, one for a stage
    that loads a model in-process when the run has GPUs (and `serving.device` isn't cpu), none
    for a stage that loads its model on the CPU anyway (a merging export)."""
    definition = stage_table.get(stage)
    if definition.trains:
        return spec.trainer.gpus
    return 1 if _beside_training(spec, stage) and not definition.cpu_only else 0


def resource_class(spec: AlignmentRunSpec, stage: str) -> Literal["train", "stage"]:
    """The operator's resource class for the stage's Pod: `train` for the training stages and
    those that run where they run (a merging export of a run with GPUs too: it needs the same
    memory, on the CPU); `stage` for the rest."""
    if stage_table.get(stage).trains or _beside_training(spec, stage):
        return "train"
    return "stage"
