"""Loading a run's spec (`parse_run`, `load_run`), and turning bad input into one clear line that
names the field or the file (`describe`, `field_path`)."""

from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from selfmoa.api.base import PATTERN_HINTS, SpecError
from selfmoa.api.names import shown
from selfmoa.api.spec import AlignmentRun

__all__ = ["SpecError", "describe", "field_path", "load_run", "parse_run"]

# Error types whose message is about the input's type: the line also shows what was given.
_SHOW_INPUT = ("_type", "_parsing", "finite_number", "literal_error", "enum")


def field_path(loc: tuple[int | str, ...], root: type[BaseModel] | None = AlignmentRun) -> str:
    """`('spec', 'red_team', 'categories', 0)` -> `spec.redTeam.categories[0]`.

    Field names become their wire aliases; map keys (a model id, an objective) stay as given.
    """
    out = ""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _alias(current, part)
        current = _child(current, part)
    return out


def _field(model: Any, part: str) -> Any:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    for name, f in model.model_fields.items():
        if part in (name, f.alias):
            return name, f
    return None


def _alias(model: Any, part: str) -> str:
    found = _field(model, part)
    if found is None:
        return part
    name, f = found
    return str(f.alias or to_camel(name))


def _child(current: Any, part: int | str) -> Any:
    """The type that the value at `part` of a `current` is validated against (None: unknown)."""
    if current is None:
        return None
    if isinstance(part, str):
        found = _field(current, part)
        if found is not None:
            return _strip_optional(found[1].annotation)
    return _unwrap(current, part)


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel] | None) -> type[BaseModel] | None:
    """The model class that the object at `loc` (from `root`) is validated against."""
    current: Any = root
    for part in loc:
        current = _child(current, part)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return annotation


def _unwrap(annotation: Any, part: int | str) -> Any:
    """The item type of a list (int index) or a dict (str key)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and isinstance(part, int) and args:
        return _strip_optional(args[0])
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return _strip_optional(args[1])
    return None


def _unknown_field(loc: tuple[int | str, ...], root: type[BaseModel] | None) -> str:
    """`spec.sampling.max_new_tokens: unknown field; did you mean maxNewTokens?`"""
    *parent, key = loc
    where = field_path(tuple(parent), root)
    where = f"{where}.{key}" if where else str(key)
    model = _model_at(tuple(parent), root)
    line = f"{where}: unknown field"
    if model is None:
        return line
    aliases = [f.alias or to_camel(n) for n, f in model.model_fields.items()]
    camel = to_camel(str(key))
    if camel in aliases:
        guess: str | None = camel
    else:
        by_lower = {a.lower(): a for a in aliases}
        close = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1, cutoff=0.6)
        guess = by_lower[close[0]] if close else None
    return f"{line}; did you mean {guess}?" if guess else line


def _given(value: Any) -> str:
    try:
        text = json.dumps(value, default=str, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _message(error: ErrorDetails) -> str:
    kind = str(error["type"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        hint = PATTERN_HINTS.get(pattern, f"does not match {pattern}")
        return f"{shown(error['input'])} {hint}"
    if kind.endswith(_SHOW_INPUT) and "input" in error:
        return f"{msg} (got {_given(error['input'])})"
    return msg


def describe(error: ValidationError) -> str:
    """The first validation error as `field.path: message` (with a count of the others)."""
    errors = error.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    # Paths and suggestions are worked out against the AlignmentRun models; for another model
    # (the operator's config) they stay as pydantic reports them.
    root = AlignmentRun if error.title == AlignmentRun.__name__ else None
    if first["type"] == "extra_forbidden" and loc:
        line = _unknown_field(loc, root)
    else:
        msg = _message(first)
        where = field_path(loc, root)
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
    # One line, whatever a message held (values are shown escaped already).
    return line.replace("\r", " ").replace("\n", " ")


def parse_run(obj: Any) -> AlignmentRun:
    """Validate an AlignmentRun given as a mapping (from YAML or the API)."""
    if not isinstance(obj, dict):
        raise SpecError("the document is not a mapping (expected an AlignmentRun object)")
    if "spec" not in obj:
        raise SpecError("spec: missing (expected an AlignmentRun with a spec)")
    try:
        # Wire names only: the API server prunes a snake_case key (`max_new_tokens`) without a
        # word, so a run file must not be read differently from the same object in a cluster.
        return AlignmentRun.model_validate(obj, by_alias=True, by_name=False)
    except ValidationError as e:
        raise SpecError(describe(e)) from None
    except RecursionError:
        raise SpecError("the document is nested too deeply") from None


def load_run(path: str | Path) -> AlignmentRun:
    """Read and validate a run file (YAML or JSON): one clear `SpecError` on anything wrong."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, not a run file") from None
    except OSError as e:
        raise SpecError(f"{p}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecError(
            f"{p}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None)
        why = f" ({' '.join(str(problem).split())})" if problem else ""
        raise SpecError(f"{p}:{where} not valid YAML{why}") from None
    except RecursionError:
        raise SpecError(f"{p}: nested too deeply") from None
    runs = [
        d for d in docs if isinstance(d, dict) and d.get("kind", "AlignmentRun") == "AlignmentRun"
    ]
    if not runs:
        raise SpecError(f"{p}: no AlignmentRun in the file")
    if len(runs) > 1:
        raise SpecError(f"{p}: {len(runs)} AlignmentRuns in one file; give one")
    return parse_run(runs[0])
