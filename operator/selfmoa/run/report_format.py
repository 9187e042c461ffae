"""How the report writes values: HTML escaping and the number formats its charts and tables share."""

from __future__ import annotations

import html

NA = "\u2013"  # en dash: no value
MINUS = "\u2212"


def e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def coord(x: float) -> str:
    """A coordinate: short, locale-free."""
    return f"{x:.1f}"


def pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def label(k: int) -> str:
    """An iteration's name: 0 is the base model."""
    return "base" if k == 0 else f"iter {k}"


def secs(s: float) -> str:
    """A wall time: seconds, then minutes, then hours."""
    if s < 59.95:
        return f"{s:.1f} s"
    whole = round(s)  # round once, so 119.7 s reads "2 min 00 s", never "1 min 60 s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(s / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"
