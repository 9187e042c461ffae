"""Run names and namespaces: what Kubernetes accepts, and what the artifact paths can hold.

A run's name is part of its artifact path (`<storage>/<namespace>/<name>/`) and of the names of
its Jobs and Services. The API server takes any DNS-1123 subdomain (253 characters, dots) as an
object name, but a Service name must be a DNS-1035 label (63 characters, a letter first, no
dots), so a run name must be a DNS-1035 label: then every child name and every path works.
Namespaces are DNS-1123 labels, as in Kubernetes.
"""

from __future__ import annotations

import re

from selfmoa.api.base import (
    DNS1035_LABEL_PATTERN,
    DNS1123_LABEL_PATTERN,
    PATTERN_HINTS,
)

MAX_NAME = 63

_RUN_NAME = re.compile(DNS1035_LABEL_PATTERN)
_NAMESPACE = re.compile(DNS1123_LABEL_PATTERN)


def shown(value: object, limit: int = 40) -> str:
    """`value` for a one-line message: quoted, escaped, cut short."""
    text = value if isinstance(value, str) else str(value)
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut)


def _problem(value: object, what: str, pattern: re.Pattern[str], hint: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} {shown(value)} must be a string"
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_NAME:
        return f"{what} {shown(value)} is {len(value)} characters; at most {MAX_NAME}"
    if pattern.fullmatch(value) is None:
        return f"{what} {shown(value)} {hint}"
    return None


def run_name_problem(name: object) -> str | None:
    """Why `name` can't name a run (one line), or None when it can."""
    return _problem(
        name,
        "run name",
        _RUN_NAME,
        PATTERN_HINTS[DNS1035_LABEL_PATTERN] + " (a DNS-1035 label: it names Jobs and Services)",
    )


def namespace_problem(namespace: object) -> str | None:
    """Why `namespace` can't be a run's namespace (one line), or None when it can."""
    return _problem(
        namespace,
        "namespace",
        _NAMESPACE,
        PATTERN_HINTS[DNS1123_LABEL_PATTERN] + " (a DNS-1123 label)",
    )
