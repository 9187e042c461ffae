"""Turning bad input into one clear line that names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from selfmoa.api.spec import AlignmentRun


class SpecError(ValueError):
    """A run file or object that can't be used; the message is one line naming the field."""


def field_path(loc: tuple[int | str, ...]) -> str:
    """`('spec', 'red_team', 'categories', 0)` -> `spec.redTeam.categories[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + to_camel(part)
    return out


def describe(error: ValidationError) -> str:
    """The first validation error as `field.path: message` (with a count of the others)."""
    errors = error.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    where = field_path(loc)
    # Model validators report on the parent object and name the field in the message
    # ("judges: duplicate ..."): join the two into one path.
    head, sep, rest = msg.partition(": ")
    if (
        sep
        and head.replace(".", "").replace("[", "").replace("]", "").isalnum()
        and " " not in head
    ):
        where, msg = (f"{where}.{head}" if where else head), rest
    line = f"{where}: {msg}" if where else msg
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


def parse_run(obj: Any) -> AlignmentRun:
    """Validate an AlignmentRun given as a mapping (from YAML or the API)."""
    if not isinstance(obj, dict):
        raise SpecError("the document is not a mapping (expected an AlignmentRun object)")
    if "spec" not in obj:
        raise SpecError("spec: missing (expected an AlignmentRun with a spec)")
    try:
        return AlignmentRun.model_validate(obj)
    except ValidationError as e:
        raise SpecError(describe(e)) from None


def load_run(path: str | Path) -> AlignmentRun:
    """Read and validate a run file (YAML or JSON): one clear `SpecError` on anything wrong."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as e:
        raise SpecError(f"{p}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}:{where} not valid YAML") from None
    runs = [
        d for d in docs if isinstance(d, dict) and d.get("kind", "AlignmentRun") == "AlignmentRun"
    ]
    if not runs:
        raise SpecError(f"{p}: no AlignmentRun in the file")
    if len(runs) > 1:
        raise SpecError(f"{p}: {len(runs)} AlignmentRuns in one file; give one")
    return parse_run(runs[0])
