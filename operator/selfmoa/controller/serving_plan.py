"""Serving decisions on top of the pure planner (still pure: no I/O, no clock).

The planner says which stage runs next; this decides how many replicas each vLLM server should
have meanwhile, and holds a stage back until the servers it talks to are ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from selfmoa.api.spec import AlignmentRunSpec, ServingEngine
from selfmoa.run import stage_table
from selfmoa.run.planner import Action, Finish, Observed, RunStage, Wait


def active_stage(action: Action, observed: Observed) -> str | None:
    """The stage running now, or about to start."""
    if isinstance(action, RunStage):
        return action.stage
    return observed.running[1] if observed.running else None


def serving_replicas(spec: AlignmentRunSpec, action: Action, observed: Observed) -> dict[str, int]:
    """Desired replicas per served model; empty when the stages load models themselves."""
    if spec.serving.engine != ServingEngine.vllm:
        return {}
    models = spec.models()
    if isinstance(action, Finish):
        # The run is over: give the GPUs back (the objects stay until the run is deleted).
        return dict.fromkeys(models, 0)
    stage = active_stage(action, observed)
    if stage is not None and stage_table.get(stage).trains and spec.serving.release_during_training:
        return dict.fromkeys(models, 0)
    return dict.fromkeys(models, spec.serving.replicas)


def hold_for_serving(
    spec: AlignmentRunSpec,
    action: Action,
    ready: Set[str],
    problems: Mapping[str, str] | None = None,
) -> Action:
    """`action`, or a Wait while a stage that needs the servers would start before they're ready;
    the Wait says what went wrong in a server's Pod (`problems`, by model), if anything did: a
    crashing init container (a model not in the cache volume) is fixed by a person, not by time."""
    if not isinstance(action, RunStage) or spec.serving.engine != ServingEngine.vllm:
        return action
    if not stage_table.get(action.stage).uses_endpoints:
        return action
    missing = [m for m in spec.models() if m not in ready]
    if not missing:
        return action
    why = [problems[m] for m in missing if problems and m in problems]
    return Wait(
        "ServingNotReady",
        f"waiting for vLLM server(s) of {', '.join(missing)} before stage {action.stage} "
        f"of iteration {action.iteration}" + "".join(f"; {w}" for w in why),
    )
