"""The report's charts: inline SVG drawn from the per-iteration metrics.

Every string from the run goes through `e` (HTML escaping); numbers are formatted here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from selfmoa.run.metrics import Metrics
from selfmoa.run.report_format import coord as _f
from selfmoa.run.report_format import e
from selfmoa.run.report_format import label as _label
from selfmoa.run.report_format import num as _num
from selfmoa.run.report_format import pct as _pct

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

W, H = 760, 330
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 56, 170, 20, 48


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
class Axes:
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


def chart_svg(chart_id: str, title: str, body: Sequence[str], height: int = H) -> str:
    return (
        f'<svg id="{e(chart_id)}" class="chart" role="img" aria-label="{e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" '
        f'height="{height}"><title>{e(title)}</title>' + "".join(body) + "</svg>"
    )


def draw_legend(items: Sequence[tuple[str, str, bool]], x: float, y: float) -> list[str]:
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
    axes: Axes,
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
    axes = Axes(ks[0], ks[-1], 0.0, 1.0)
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
    body += draw_legend(legend, axes.right + 18, axes.top + 10)
    return chart_svg("chart-trend", "Objectives per iteration", body)


def category_chart(metrics: Mapping[int, Metrics]) -> str:
    """(2) Attack success rate per harm category: one group per category, a bar per iteration."""
    ks = sorted(metrics)
    cats = sorted({c for m in metrics.values() for c in m.per_category})
    top = _nice_ceil(max([v for m in metrics.values() for v in m.per_category.values()] or [0.0]))
    axes = Axes(0, max(len(cats), 1), 0.0, top, height=H + 30)
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
    body += draw_legend(
        [(_label(k), colours[i], False) for i, k in enumerate(ks)], axes.right + 18, axes.top + 10
    )
    return chart_svg("chart-categories", "Attack success rate per harm category", body, H + 30)


def _plane_axes(metrics: Mapping[int, Metrics], ks: Sequence[int]) -> tuple[Axes, list[str]]:
    """Axes fitted to the iterations' (helpfulness, safety) points, with grid and frame."""
    xt = _nice_ticks([metrics[k].helpfulness for k in ks])
    yt = _nice_ticks([metrics[k].safety for k in ks])
    axes = Axes(xt[0], xt[-1], yt[0], yt[-1])
    body = axes.y_grid(yt, lambda t: f"{t:.2f}")
    for t in xt:
        body.append(
            f'<line class="grid" x1="{_f(axes.x(t))}" x2="{_f(axes.x(t))}" y1="{_f(axes.top)}" '
            f'y2="{_f(axes.bottom)}"/><text class="tick" x="{_f(axes.x(t))}" '
            f'y="{_f(axes.bottom + 16)}" text-anchor="middle">{t:.2f}</text>'
        )
    body += axes.frame("helpfulness", "safety")
    return axes, body


def _plane_arrows(axes: Axes, metrics: Mapping[int, Metrics], ks: Sequence[int]) -> list[str]:
    body = [
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker></defs>'
    ]
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
    return body


def plane_chart(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """(3) The safety/helpfulness plane: where each iteration lands, arrows in the order run."""
    ks = sorted(metrics)
    axes, body = _plane_axes(metrics, ks)
    body += _plane_arrows(axes, metrics, ks)
    colours = iteration_colours(len(ks))
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
    body += draw_legend(
        [("later = darker", colours[-1], False), ("rolled back", ROLLED_BACK, False)],
        axes.right + 18,
        axes.top + 10,
    )
    return chart_svg("chart-plane", "Safety vs helpfulness, iteration by iteration", body)


def iteration_colours(n: int) -> list[str]:
    """Light to dark blue: later iterations read as 'further along'."""
    lo, hi = (198, 219, 239), (8, 48, 107)
    out = []
    for i in range(n):
        t = i / (n - 1) if n > 1 else 1.0
        r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi, strict=True))
        out.append(f"#{r:02x}{g:02x}{b:02x}")
    return out
