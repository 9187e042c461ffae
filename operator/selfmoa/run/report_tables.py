"""The report's tables and summary: metrics per iteration, stage wall times, configuration."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from selfmoa.run.metrics import Metrics, ObjectiveMetrics
from selfmoa.run.report_format import MINUS, NA, e
from selfmoa.run.report_format import coord as _f
from selfmoa.run.report_format import label as _label
from selfmoa.run.report_format import num as _num
from selfmoa.run.report_format import pct as _pct
from selfmoa.run.report_format import secs as _secs
from selfmoa.run.stage_table import NAMES as STAGE_NAMES

_STAGE_KEY = re.compile(r"^iter-(\d+)/([A-Za-z0-9_-]+)$")


def _gold_cells(g: ObjectiveMetrics | None) -> list[str]:
    if g is None:
        return [NA] * 4
    return [_num(g.safety), _num(g.helpfulness), _pct(g.attack_success_rate), _pct(g.over_refusal)]


def _validation_cells(m: Metrics) -> list[str]:
    v = m.validation
    return [_pct(v.attack_success_rate), _num(v.helpfulness)] if v else [NA, NA]


def _outcome_cells(m: Metrics) -> list[str]:
    o = m.outcomes
    return [_pct(o.declined), _pct(o.deflection), _pct(o.garbled)] if o else [NA] * 3


def _capability_cells(m: Metrics) -> list[str]:
    c = m.capability
    return [_num(c.perplexity, 2), _pct(c.next_token_accuracy)] if c else [NA, NA]


class _Columns(NamedTuple):
    """Columns of the metrics table shown only when some iteration has their figures."""

    head: tuple[str, ...]
    shown: Callable[[Metrics], bool]
    cells: Callable[[Metrics], list[str]]


#: The optional column groups, in the table's order.
_OPTIONAL_COLUMNS = (
    _Columns(
        ("validation ASR", "validation helpful."),
        lambda m: m.validation is not None,
        _validation_cells,
    ),
    _Columns(
        ("gold safety", "gold helpful.", "gold ASR", "gold over-ref."),
        lambda m: m.gold is not None,
        lambda m: _gold_cells(m.gold),
    ),
    _Columns(
        ("declined", "deflected", "garbled"), lambda m: m.outcomes is not None, _outcome_cells
    ),
    _Columns(
        ("perplexity", "next-token acc."),
        lambda m: bool(m.capability and m.capability.perplexity is not None),
        _capability_cells,
    ),
    _Columns(
        ("lm-eval score",),
        lambda m: bool(m.capability and m.capability.tasks),
        lambda m: [_num(m.capability.task_score if m.capability else None)],
    ),
    _Columns(("PGR",), lambda m: m.pgr is not None, lambda m: [_num(m.pgr, 2)]),
)


def metrics_table(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """(4) One row per iteration; gold columns and PGR only when some iteration has them."""
    groups = [g for g in _OPTIONAL_COLUMNS if any(g.shown(m) for m in metrics.values())]
    head = ["iteration", "decision", "from", "safety", "helpfulness", "ASR", "over-refusal"]
    head += ["pairs", "prompts", "tokens"]
    head += [h for g in groups for h in g.head]
    rows = []
    for k in sorted(metrics):
        m = metrics[k]
        cells = _metrics_cells(k, m, accepted.get(k))
        cells += [c for g in groups for c in g.cells(m)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table id="metrics" class="data"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _metrics_cells(k: int, m: Metrics, accepted: bool | None) -> list[str]:
    """The cells every row has: iteration, gate decision, parent and the weak judges' figures."""
    decision = {True: "accepted", False: "rolled back", None: NA}[accepted]
    cls = {True: "ok", False: "bad", None: ""}[accepted]
    return [
        e(_label(k)),
        f'<span class="{cls}">{e(decision)}</span>',
        e(NA if m.parent is None else _label(m.parent)),
        _num(m.safety),
        _num(m.helpfulness),
        _pct(m.attack_success_rate),
        _pct(m.over_refusal),
        str(m.pairs),
        str(m.prompts),
        f"{m.tokens:,}",
    ]


def _stage_grid(stage_seconds: Mapping[str, float], parsed: Mapping[str, re.Match[str]]) -> str:
    """Stage wall times as a grid: one row per iteration, one column per stage."""
    grid: dict[int, dict[str, float]] = {}
    for key, m in parsed.items():
        grid.setdefault(int(m.group(1)), {})[m.group(2)] = stage_seconds[key]
    seen = {s for row in grid.values() for s in row}
    stages = [s for s in STAGE_NAMES if s in seen] + sorted(seen - set(STAGE_NAMES))
    head = "".join(f"<th>{e(s)}</th>" for s in ["iteration", *stages, "total"])
    rows = []
    for k in sorted(grid):
        cells = [f"<td>{e(_label(k))}</td>"]
        cells += [
            f"<td>{_secs(grid[k][s])}</td>" if s in grid[k] else f"<td>{NA}</td>" for s in stages
        ]
        cells.append(f"<td><b>{_secs(sum(grid[k].values()))}</b></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    totals = [f"<td><b>{_secs(sum(r.get(s, 0.0) for r in grid.values()))}</b></td>" for s in stages]
    total = sum(stage_seconds.values())
    rows.append(
        "<tr><td><b>total</b></td>" + "".join(totals) + f"<td><b>{_secs(total)}</b></td></tr>"
    )
    return (
        f'<table id="stages" class="data"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def stage_table(stage_seconds: Mapping[str, float]) -> str:
    """Stage wall times: a grid iteration x stage when keys are `iter-NNN/stage`, else a list."""
    if not stage_seconds:
        return '<p class="muted">No stage timings recorded.</p>'
    parsed = {key: m for key in stage_seconds if (m := _STAGE_KEY.match(key)) is not None}
    if len(parsed) == len(stage_seconds):
        return _stage_grid(stage_seconds, parsed)
    total = sum(stage_seconds.values())
    rows = [
        f"<tr><td>{e(key)}</td><td>{_secs(v)}</td>"
        f'<td class="barcell"><span class="hbar" style="width:{_f(100 * v / total if total else 0)}%">'
        "</span></td></tr>"
        for key, v in stage_seconds.items()
    ]
    return (
        '<table id="stages" class="data"><thead><tr><th>stage</th><th>wall time</th><th></th>'
        "</tr></thead><tbody>" + "".join(rows) + f"<tr><td><b>total</b></td><td><b>{_secs(total)}"
        "</b></td><td></td></tr></tbody></table>"
    )


def _spec_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def spec_list(spec_summary: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(_spec_value(v))}</dd>" for k, v in spec_summary.items())
    return f'<dl class="spec">{items}</dl>'


def headline(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """Base vs the iteration the run ends with (the last one accepted)."""
    ks = sorted(metrics)
    ok = [k for k in ks if accepted.get(k, True)]
    final = ok[-1] if ok else ks[-1]
    base, last = metrics[ks[0]], metrics[final]

    def card(name: str, a: float, b: float, *, rate: bool, higher_better: bool) -> str:
        fmt = _pct if rate else _num
        delta = b - a
        good = (delta > 0) == higher_better if abs(delta) > 1e-9 else None
        cls = {True: "ok", False: "bad", None: "muted"}[good]
        rel = f" ({100 * delta / a:+.1f}% relative)" if abs(a) > 1e-9 and abs(delta) > 1e-9 else ""
        diff = ("+" if delta >= 0 else MINUS) + fmt(abs(delta))
        return (
            f'<div class="card"><div class="card-title">{e(name)}</div>'
            f'<div class="card-value">{e(fmt(a))} → {e(fmt(b))}</div>'
            f'<div class="{cls}">{e(diff)}{e(rel)}</div></div>'
        )

    cards = [
        card("Safety", base.safety, last.safety, rate=False, higher_better=True),
        card("Helpfulness", base.helpfulness, last.helpfulness, rate=False, higher_better=True),
        card(
            "Attack success",
            base.attack_success_rate,
            last.attack_success_rate,
            rate=True,
            higher_better=False,
        ),
        card("Over-refusal", base.over_refusal, last.over_refusal, rate=True, higher_better=False),
    ]
    return (
        f'<p class="muted">{e(_label(ks[0]))} → {e(_label(final))} (the last accepted '
        f"iteration); {sum(m.pairs for m in metrics.values())} preference pairs in all.</p>"
        f'<div class="cards">{"".join(cards)}</div>'
    )
