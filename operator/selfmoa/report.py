"""The run's HTML report: one self-contained page, charts drawn as inline SVG.

No JavaScript, no external resources (a Content-Security-Policy forbids loading any), so the
page opens the same from a laptop, an S3 console or an air-gapped cluster. Every string that
comes from the run (titles, category names, stage names, spec values) goes through
`html.escape`; numbers are formatted here.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selfmoa import layout
from selfmoa.metrics import Metrics, ObjectiveMetrics

# Series colours (colour-blind safe, Okabe-Ito) and the order they are drawn in.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("safety", "Safety", "#009E73"),
    ("helpfulness", "Helpfulness", "#0072B2"),
    ("attack_success_rate", "Attack success rate", "#D55E00"),
    ("over_refusal", "Over-refusal", "#CC79A7"),
)
GOLD_SERIES: tuple[tuple[str, str, str], ...] = (
    ("safety", "Gold safety", "#009E73"),
    ("helpfulness", "Gold helpfulness", "#0072B2"),
)
ROLLED_BACK = "#B00020"
NA = "\u2013"  # en dash: no value
MINUS = "\u2212"

W, H = 760, 330
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 56, 170, 20, 48

_STAGE_KEY = re.compile(r"^iter-(\d+)/([A-Za-z0-9_-]+)$")


def e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _f(x: float) -> str:
    """A coordinate: short, locale-free."""
    return f"{x:.1f}"


def _pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def _label(k: int) -> str:
    return "base" if k == 0 else f"iter {k}"


def _nice_ticks(vals: Sequence[float]) -> list[float]:
    """Round tick values (3 to 7 of them) covering `vals` with some room, inside 0..1."""
    lo, hi = min(vals), max(vals)
    pad = max((hi - lo) * 0.15, 0.03)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    for step in (0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25):
        a, b = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if b - a <= 6:
            return [round(i * step, 6) for i in range(a, b + 1)]
    return [0.0, 0.25, 0.5, 0.75, 1.0]


def _nice_ceil(v: float) -> float:
    """The smallest 'round' axis maximum at or above v (rates live in 0..1)."""
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if v <= step + 1e-12:
            return step
    return math.ceil(v)


@dataclass(frozen=True)
class _Axes:
    """A plot area mapping data (x0..x1, y0..y1) to pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = W
    height: int = H

    @property
    def left(self) -> float:
        return M_LEFT

    @property
    def right(self) -> float:
        return self.width - M_RIGHT

    @property
    def top(self) -> float:
        return M_TOP

    @property
    def bottom(self) -> float:
        return self.height - M_BOTTOM

    def x(self, v: float) -> float:
        span = self.x1 - self.x0
        if span <= 0:
            return (self.left + self.right) / 2
        return self.left + (v - self.x0) / span * (self.right - self.left)

    def y(self, v: float) -> float:
        span = self.y1 - self.y0
        return self.bottom - (v - self.y0) / span * (self.bottom - self.top)

    def y_grid(self, ticks: Iterable[float], fmt: Callable[[float], str]) -> list[str]:
        out = []
        for t in ticks:
            y = _f(self.y(t))
            out.append(
                f'<line class="grid" x1="{_f(self.left)}" x2="{_f(self.right)}" y1="{y}" y2="{y}"/>'
                f'<text class="tick" x="{_f(self.left - 6)}" y="{y}" text-anchor="end" '
                f'dominant-baseline="middle">{e(fmt(t))}</text>'
            )
        return out

    def frame(self, x_title: str, y_title: str) -> list[str]:
        cx, cy = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        return [
            f'<line class="axis" x1="{_f(self.left)}" x2="{_f(self.right)}" '
            f'y1="{_f(self.bottom)}" y2="{_f(self.bottom)}"/>',
            f'<line class="axis" x1="{_f(self.left)}" x2="{_f(self.left)}" '
            f'y1="{_f(self.top)}" y2="{_f(self.bottom)}"/>',
            f'<text class="axis-title" x="{_f(cx)}" y="{_f(self.height - 8)}" '
            f'text-anchor="middle">{e(x_title)}</text>',
            f'<text class="axis-title" transform="translate(14 {_f(cy)}) rotate(-90)" '
            f'text-anchor="middle">{e(y_title)}</text>',
        ]


def _svg(chart_id: str, title: str, body: Sequence[str], height: int = H) -> str:
    return (
        f'<svg id="{e(chart_id)}" class="chart" role="img" aria-label="{e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" '
        f'height="{height}"><title>{e(title)}</title>' + "".join(body) + "</svg>"
    )


def _legend(items: Sequence[tuple[str, str, bool]], x: float, y: float) -> list[str]:
    """(label, colour, dashed) entries stacked at (x, y)."""
    out = []
    for i, (label, colour, dashed) in enumerate(items):
        ly = y + i * 20
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x + 22)}" y1="{_f(ly)}" y2="{_f(ly)}" '
            f'stroke="{colour}" stroke-width="2.5"{dash}/>'
            f'<text class="legend" x="{_f(x + 28)}" y="{_f(ly)}" '
            f'dominant-baseline="middle">{e(label)}</text>'
        )
    return out


def _series_lines(
    axes: _Axes,
    points: Sequence[tuple[int, float]],
    name: str,
    label: str,
    colour: str,
    *,
    dashed: bool,
    point_class: str,
    accepted: Mapping[int, bool],
) -> list[str]:
    out = []
    if len(points) >= 2:
        coords = " ".join(f"{_f(axes.x(k))},{_f(axes.y(v))}" for k, v in points)
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        out.append(
            f'<polyline class="line" data-series="{e(name)}" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="2.5"{dash}/>'
        )
    for k, v in points:
        rolled_back = accepted.get(k) is False
        fill = "#fff" if dashed or rolled_back else colour
        stroke = ROLLED_BACK if rolled_back else colour
        note = " (rolled back)" if rolled_back else ""
        out.append(
            f'<circle class="{point_class}" data-series="{e(name)}" data-iteration="{k}" '
            f'cx="{_f(axes.x(k))}" cy="{_f(axes.y(v))}" r="4.5" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="2"><title>{e(label)}, {e(_label(k))}: '
            f"{e(_num(v))}{e(note)}</title></circle>"
        )
    return out


def trend_chart(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """(1) Every objective per iteration; dashed: the gold judge's view when there is one."""
    ks = sorted(metrics)
    axes = _Axes(ks[0], ks[-1], 0.0, 1.0)
    body = axes.y_grid([0, 0.25, 0.5, 0.75, 1.0], lambda t: f"{t:.2f}")
    for k in ks:
        body.append(
            f'<text class="tick" x="{_f(axes.x(k))}" y="{_f(axes.bottom + 16)}" '
            f'text-anchor="middle">{e(_label(k))}</text>'
        )
    body += axes.frame("iteration", "score / rate (0..1)")
    legend: list[tuple[str, str, bool]] = []
    for name, label, colour in SERIES:
        pts = [(k, float(getattr(metrics[k], name))) for k in ks]
        body += _series_lines(
            axes, pts, name, label, colour, dashed=False, point_class="pt", accepted=accepted
        )
        legend.append((label, colour, False))
    for name, label, colour in GOLD_SERIES:
        gold = [(k, float(getattr(g, name))) for k in ks if (g := metrics[k].gold) is not None]
        if gold:
            body += _series_lines(
                axes, gold, f"gold_{name}", label, colour, dashed=True,
                point_class="pt-gold", accepted=accepted,
            )  # fmt: skip
            legend.append((label, colour, True))
    body += _legend(legend, axes.right + 18, axes.top + 10)
    return _svg("chart-trend", "Objectives per iteration", body)


def category_chart(metrics: Mapping[int, Metrics]) -> str:
    """(2) Attack success rate per harm category: one group per category, a bar per iteration."""
    ks = sorted(metrics)
    cats = sorted({c for m in metrics.values() for c in m.per_category})
    top = _nice_ceil(max([v for m in metrics.values() for v in m.per_category.values()] or [0.0]))
    axes = _Axes(0, max(len(cats), 1), 0.0, top, height=H + 30)
    ticks = [top * i / 4 for i in range(5)]
    body = axes.y_grid(ticks, lambda t: f"{round(100 * t, 1):g}%")
    body += axes.frame("", "attack success rate")
    colours = iteration_colours(len(ks))
    group_w = (axes.right - axes.left) / max(len(cats), 1)
    bar_w = min(28.0, group_w * 0.8 / max(len(ks), 1))
    for ci, cat in enumerate(cats):
        gx = axes.left + ci * group_w + (group_w - bar_w * len(ks)) / 2
        for ki, k in enumerate(ks):
            v = metrics[k].per_category.get(cat)
            if v is None:
                continue  # category not evaluated in this iteration: no bar rather than a zero
            x, y = gx + ki * bar_w, axes.y(v)
            body.append(
                f'<rect class="bar" data-category="{e(cat)}" data-iteration="{k}" '
                f'x="{_f(x)}" y="{_f(y)}" width="{_f(bar_w - 2)}" '
                f'height="{_f(max(axes.bottom - y, 0.0))}" fill="{colours[ki]}">'
                f"<title>{e(cat)}, {e(_label(k))}: {e(_pct(v))}</title></rect>"
            )
        lx = axes.left + (ci + 0.5) * group_w
        body.append(
            f'<text class="tick" text-anchor="end" transform="translate({_f(lx)} '
            f'{_f(axes.bottom + 14)}) rotate(-25)">{e(cat)}</text>'
        )
    if not cats:
        body.append(
            f'<text class="empty" x="{_f((axes.left + axes.right) / 2)}" '
            f'y="{_f((axes.top + axes.bottom) / 2)}" text-anchor="middle">'
            "no per-category results</text>"
        )
    body += _legend(
        [(_label(k), colours[i], False) for i, k in enumerate(ks)], axes.right + 18, axes.top + 10
    )
    return _svg("chart-categories", "Attack success rate per harm category", body, H + 30)


def plane_chart(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """(3) The safety/helpfulness plane: where each iteration lands, arrows in the order run."""
    ks = sorted(metrics)
    xs = [metrics[k].helpfulness for k in ks]
    ys = [metrics[k].safety for k in ks]

    xt, yt = _nice_ticks(xs), _nice_ticks(ys)
    axes = _Axes(xt[0], xt[-1], yt[0], yt[-1])
    body = axes.y_grid(yt, lambda t: f"{t:.2f}")
    for t in xt:
        body.append(
            f'<line class="grid" x1="{_f(axes.x(t))}" x2="{_f(axes.x(t))}" y1="{_f(axes.top)}" '
            f'y2="{_f(axes.bottom)}"/><text class="tick" x="{_f(axes.x(t))}" '
            f'y="{_f(axes.bottom + 16)}" text-anchor="middle">{t:.2f}</text>'
        )
    body += axes.frame("helpfulness", "safety")
    body.append(
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker></defs>'
    )
    colours = iteration_colours(len(ks))
    # An iteration starts from its parent's adapter (the previous one unless that was rolled
    # back), so the arrow comes from there: the path the run actually took.
    for i, k in enumerate(ks[1:], start=1):
        parent = metrics[k].parent
        src = parent if parent is not None and parent in metrics and parent != k else ks[i - 1]
        sx, sy = axes.x(metrics[src].helpfulness), axes.y(metrics[src].safety)
        tx, ty = axes.x(metrics[k].helpfulness), axes.y(metrics[k].safety)
        dist = math.hypot(tx - sx, ty - sy)
        if dist > 1e-6:  # stop short of the circles so the arrowhead stays visible
            ux, uy = (tx - sx) / dist, (ty - sy) / dist
            sx, sy, tx, ty = sx + ux * 6, sy + uy * 6, tx - ux * 7, ty - uy * 7
        body.append(
            f'<line class="arrow" data-from="{src}" data-to="{k}" x1="{_f(sx)}" y1="{_f(sy)}" '
            f'x2="{_f(tx)}" y2="{_f(ty)}" stroke="#555" stroke-width="1.5" '
            f'marker-end="url(#arrowhead)"/>'
        )
    for i, k in enumerate(ks):
        m = metrics[k]
        rolled_back = accepted.get(k) is False
        cx, cy = axes.x(m.helpfulness), axes.y(m.safety)
        note = " — rolled back" if rolled_back else ""
        body.append(
            f'<circle class="pt" data-iteration="{k}" cx="{_f(cx)}" cy="{_f(cy)}" r="6" '
            f'fill="{"#fff" if rolled_back else colours[i]}" '
            f'stroke="{ROLLED_BACK if rolled_back else "#333"}" stroke-width="1.5">'
            f"<title>{e(_label(k))}: safety {_num(m.safety)}, helpfulness "
            f"{_num(m.helpfulness)}{e(note)}</title></circle>"
            f'<text class="pt-label" x="{_f(cx + 9)}" y="{_f(cy - 8)}">{e(_label(k))}</text>'
        )
    body += _legend(
        [("later = darker", colours[-1], False), ("rolled back", ROLLED_BACK, False)],
        axes.right + 18,
        axes.top + 10,
    )
    return _svg("chart-plane", "Safety vs helpfulness, iteration by iteration", body)


def iteration_colours(n: int) -> list[str]:
    """Light to dark blue: later iterations read as 'further along'."""
    lo, hi = (198, 219, 239), (8, 48, 107)
    out = []
    for i in range(n):
        t = i / (n - 1) if n > 1 else 1.0
        r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi, strict=True))
        out.append(f"#{r:02x}{g:02x}{b:02x}")
    return out


# Tables ---------------------------------------------------------------------------------------


def _gold_cells(g: ObjectiveMetrics | None) -> list[str]:
    if g is None:
        return [NA] * 4
    return [_num(g.safety), _num(g.helpfulness), _pct(g.attack_success_rate), _pct(g.over_refusal)]


def metrics_table(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """(4) One row per iteration; gold columns and PGR only when some iteration has them."""
    ks = sorted(metrics)
    has_gold = any(m.gold is not None for m in metrics.values())
    has_pgr = any(m.pgr is not None for m in metrics.values())
    head = ["iteration", "decision", "from", "safety", "helpfulness", "ASR", "over-refusal"]
    head += ["pairs", "prompts", "tokens"]
    if has_gold:
        head += ["gold safety", "gold helpful.", "gold ASR", "gold over-ref."]
    if has_pgr:
        head.append("PGR")
    rows = []
    for k in ks:
        m = metrics[k]
        decision = {True: "accepted", False: "rolled back", None: NA}[accepted.get(k)]
        cls = {True: "ok", False: "bad", None: ""}[accepted.get(k)]
        cells = [
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
        if has_gold:
            cells += _gold_cells(m.gold)
        if has_pgr:
            cells.append(_num(m.pgr, 2))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table id="metrics" class="data"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def stage_table(stage_seconds: Mapping[str, float]) -> str:
    """Stage wall times: a grid iteration x stage when keys are `iter-NNN/stage`, else a list."""
    if not stage_seconds:
        return '<p class="muted">No stage timings recorded.</p>'
    parsed = {key: _STAGE_KEY.match(key) for key in stage_seconds}
    total = sum(stage_seconds.values())
    if all(parsed.values()):
        grid: dict[int, dict[str, float]] = {}
        for key, m in parsed.items():
            assert m is not None
            grid.setdefault(int(m.group(1)), {})[m.group(2)] = stage_seconds[key]
        seen = {s for row in grid.values() for s in row}
        stages = [s for s in layout.ALL_STAGES if s in seen] + sorted(seen - set(layout.ALL_STAGES))
        head = "".join(f"<th>{e(s)}</th>" for s in ["iteration", *stages, "total"])
        rows = []
        for k in sorted(grid):
            cells = [f"<td>{e(_label(k))}</td>"]
            cells += [
                f"<td>{_secs(grid[k][s])}</td>" if s in grid[k] else f"<td>{NA}</td>"
                for s in stages
            ]
            cells.append(f"<td><b>{_secs(sum(grid[k].values()))}</b></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        totals = [
            f"<td><b>{_secs(sum(r.get(s, 0.0) for r in grid.values()))}</b></td>" for s in stages
        ]
        rows.append(
            "<tr><td><b>total</b></td>" + "".join(totals) + f"<td><b>{_secs(total)}</b></td></tr>"
        )
        return (
            f'<table id="stages" class="data"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows)
            + "</tbody></table>"
        )
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


def _secs(s: float) -> str:
    if s < 59.95:
        return f"{s:.1f} s"
    whole = round(s)  # round once, so 119.7 s reads "2 min 00 s", never "1 min 60 s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(s / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


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


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1d2330}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:0 0 10px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:16px 20px;margin:16px 0}
.muted{color:#6a7280}.ok{color:#1a7f37}.bad{color:#b00020}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 180px;border:1px solid #e1e4e8;border-radius:6px;padding:10px 12px}
.card-title{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#6a7280}
.card-value{font-size:20px;font-weight:600;margin:4px 0}
svg.chart{max-width:100%;height:auto;font-size:12px}
svg .grid{stroke:#e6e8eb}svg .axis{stroke:#888}svg .tick{fill:#555}
svg .axis-title{fill:#333;font-weight:600}svg .legend{fill:#333}
svg .pt-label{fill:#222;font-weight:600}svg .empty{fill:#999}
.scroll{overflow-x:auto}
table.data{border-collapse:collapse;width:100%;font-size:12.5px;font-variant-numeric:tabular-nums}
table.data th,table.data td{border-bottom:1px solid #eceef1;padding:5px 6px;text-align:right}
table.data th:first-child,table.data td:first-child{text-align:left}
table.data th{background:#f3f4f6}table.data td{white-space:nowrap}
.barcell{width:40%}.hbar{display:inline-block;height:10px;background:#0072B2;border-radius:2px}
dl.spec{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.spec dt{font-weight:600}dl.spec dd{margin:0;font-family:ui-monospace,monospace;
overflow-wrap:anywhere}
"""


def render_report(
    *,
    title: str,
    metrics: Mapping[int, Metrics],
    stage_seconds: Mapping[str, float] | None = None,
    accepted: Mapping[int, bool] | None = None,
    spec_summary: Mapping[str, Any] | None = None,
) -> str:
    """The whole report page. `metrics` maps iteration -> Metrics (0 = the base model)."""
    acc: Mapping[int, bool] = accepted or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing on this page may load anything: no scripts, fonts, images from elsewhere.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
    ]
    if not metrics:
        parts.append('<section><p class="muted">No iteration has been evaluated yet.</p></section>')
    else:
        parts += [
            f"<section><h2>Summary</h2>{headline(metrics, acc)}</section>",
            f"<section><h2>Objectives per iteration</h2>{trend_chart(metrics, acc)}</section>",
            "<section><h2>Attack success rate per harm category</h2>"
            f"{category_chart(metrics)}</section>",
            "<section><h2>Safety / helpfulness trade-off</h2>"
            f"{plane_chart(metrics, acc)}</section>",
            f'<section><h2>Metrics</h2><div class="scroll">{metrics_table(metrics, acc)}</div>'
            "</section>",
        ]
    if stage_seconds is not None:
        parts.append(
            f'<section><h2>Stage wall times</h2><div class="scroll">{stage_table(stage_seconds)}'
            "</div></section>"
        )
    if spec_summary:
        parts.append(f"<section><h2>Configuration</h2>{spec_list(spec_summary)}</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
