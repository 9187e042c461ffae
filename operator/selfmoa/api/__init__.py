"""Typed API of the AlignmentRun resource (spec, status) and the CRD generated from it."""

from selfmoa.api.errors import SpecError, load_run, parse_run
from selfmoa.api.names import namespace_problem, run_name_problem
from selfmoa.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    TINY_MODEL,
    VERSION,
    AlignmentRun,
    AlignmentRunSpec,
    AlignmentRunStatus,
    Condition,
    IterationStatus,
    JudgeKind,
    JudgeSpec,
    Objective,
    Phase,
)

__all__ = [
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
    "SpecError",
    "load_run",
    "namespace_problem",
    "parse_run",
    "run_name_problem",
]
