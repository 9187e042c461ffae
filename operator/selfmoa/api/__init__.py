"""Typed API of the AlignmentRun resource (spec, status) and the CRD generated from it.

The names below are loaded on first use (PEP 562): importing a light submodule such as
`selfmoa.api.exits` or `selfmoa.api.stage_container` must not load pydantic and the whole spec,
or every `selfmoa --help` pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checker sees them (`X as X`: re-exported)
    from selfmoa.api.loader import SpecError as SpecError
    from selfmoa.api.loader import load_run as load_run
    from selfmoa.api.loader import parse_run as parse_run
    from selfmoa.api.names import namespace_problem as namespace_problem
    from selfmoa.api.names import run_name_problem as run_name_problem
    from selfmoa.api.spec import API_VERSION as API_VERSION
    from selfmoa.api.spec import GROUP as GROUP
    from selfmoa.api.spec import KIND as KIND
    from selfmoa.api.spec import PLURAL as PLURAL
    from selfmoa.api.spec import TINY_MODEL as TINY_MODEL
    from selfmoa.api.spec import VERSION as VERSION
    from selfmoa.api.spec import AlignmentRun as AlignmentRun
    from selfmoa.api.spec import AlignmentRunSpec as AlignmentRunSpec
    from selfmoa.api.spec import AlignmentRunStatus as AlignmentRunStatus
    from selfmoa.api.spec import Condition as Condition
    from selfmoa.api.spec import IterationStatus as IterationStatus
    from selfmoa.api.spec import JudgeKind as JudgeKind
    from selfmoa.api.spec import JudgeSpec as JudgeSpec
    from selfmoa.api.spec import Objective as Objective
    from selfmoa.api.spec import Phase as Phase

#: Exported name -> the submodule that defines it.
_WHERE = {
    **dict.fromkeys(("SpecError", "load_run", "parse_run"), "selfmoa.api.loader"),
    **dict.fromkeys(("namespace_problem", "run_name_problem"), "selfmoa.api.names"),
    **dict.fromkeys(
        (
            "API_VERSION",
            "GROUP",
            "KIND",
            "PLURAL",
            "TINY_MODEL",
            "VERSION",
            "AlignmentRun",
            "AlignmentRunSpec",
            "AlignmentRunStatus",
            "Condition",
            "IterationStatus",
            "JudgeKind",
            "JudgeSpec",
            "Objective",
            "Phase",
        ),
        "selfmoa.api.spec",
    ),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        # Not one of ours: `from selfmoa.api import stage_container` then imports the submodule.
        raise AttributeError(f"module 'selfmoa.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
