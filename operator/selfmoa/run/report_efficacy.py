"""The report's efficacy evidence: what the answers were, not only how they scored.

Outcome classes per iteration (a stacked bar per iteration for the answers to harmful prompts,
a table for every kind), sample answers before and after, each weak judge's agreement with the
gold judge, and the data-efficiency curve (preference pairs spent vs gold attack success rate).
Every string from the run goes through `e`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from selfmoa.run.metrics import Metrics, Outcomes
from selfmoa.run.report_format import NA, e
from selfmoa.run.report_format import coord as _f
from selfmoa.run.report_format import label as _label
from selfmoa.run.report_format import num as _num
from selfmoa.run.report_format import pct as _pct
from selfmoa.run.report_svg import Axes, H, chart_svg, draw_legend

#: Outcome classes in the order they stack, with their colours (Okabe-Ito; good ones first).
CLASS_COLOURS: dict[str, str] = {
    "redirect": "#009E73",
    "refusal": "#56B4E9",
    "safe_answer": "#CC79A7",
    "on_topic": "#009E73",
    "other": "#999999",
    "off_topic": "#F0E442",
    "deflection": "#F0E442",
    "garbled": "#999999",
    "unsafe": "#D55E00",
}


def _classes(outcomes: Sequence[Outcomes], kind: str) -> list[str]:
    seen = {c for o in outcomes for c in o.by_kind.get(kind, {})}
    return [c for c in CLASS_COLOURS if c in seen] + sorted(seen - set(CLASS_COLOURS))


def outcome_chart(metrics: Mapping[int, Metrics]) -> str:
    """Stacked shares of the outcome classes of the held-out answers to harmful prompts."""
    ks = [k for k in sorted(metrics) if metrics[k].outcomes is not None]
    outs = [metrics[k].outcomes for k in ks]
    classes = _classes([o for o in outs if o is not None], "harmful")
    axes = Axes(0, max(len(ks), 1), 0.0, 1.0)
    body = axes.y_grid([0, 0.25, 0.5, 0.75, 1.0], lambda t: f"{round(100 * t):d}%")
    body += axes.frame("iteration", "share of answers to harmful prompts")
    slot = (axes.right - axes.left) / max(len(ks), 1)
    bar_w = min(48.0, slot * 0.7)
    for i, k in enumerate(ks):
        o = metrics[k].outcomes
        shares = o.by_kind.get("harmful", {}) if o is not None else {}
        x = axes.left + i * slot + (slot - bar_w) / 2
        acc = 0.0
        for c in classes:
            v = shares.get(c, 0.0)
            if v <= 0:
                continue
            y_top, y_bot = axes.y(acc + v), axes.y(acc)
            body.append(
                f'<rect class="seg" data-class="{e(c)}" data-iteration="{k}" x="{_f(x)}" '
                f'y="{_f(y_top)}" width="{_f(bar_w)}" height="{_f(max(y_bot - y_top, 0.0))}" '
                f'fill="{CLASS_COLOURS.get(c, "#444")}"><title>{e(c)}, {e(_label(k))}: '
                f"{e(_pct(v))}</title></rect>"
            )
            acc += v
        body.append(
            f'<text class="tick" x="{_f(x + bar_w / 2)}" y="{_f(axes.bottom + 16)}" '
            f'text-anchor="middle">{e(_label(k))}</text>'
        )
    legend = [(c, CLASS_COLOURS.get(c, "#444"), False) for c in reversed(classes)]
    body += draw_legend(legend, axes.right + 18, axes.top + 10)
    return chart_svg("chart-outcomes", "Outcome classes of answers to harmful prompts", body)


def outcome_table(metrics: Mapping[int, Metrics]) -> str:
    """One row per iteration and prompt kind: the share of each outcome class."""
    ks = [k for k in sorted(metrics) if metrics[k].outcomes is not None]
    outs = {k: metrics[k].outcomes for k in ks}
    kinds = sorted({kind for o in outs.values() if o is not None for kind in o.by_kind})
    rows = []
    for kind in kinds:
        classes = _classes([o for o in outs.values() if o is not None], kind)
        for k in ks:
            o = outs[k]
            assert o is not None
            shares = o.by_kind.get(kind, {})
            cells = [e(kind), e(_label(k)), str(o.counts.get(kind, 0)), e(o.source)]
            cells.append(", ".join(f"{e(c)} {_pct(shares[c])}" for c in classes if c in shares))
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table id="outcomes" class="data"><thead><tr><th>prompts</th><th>iteration</th>'
        "<th>answers</th><th>classed by</th><th>outcome classes</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _final(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> int:
    ok = [k for k in sorted(metrics) if accepted.get(k, True)]
    return ok[-1] if ok else max(metrics)


def samples_table(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """The sampled held-out prompts: the starting point's answer beside the final one."""
    ks = sorted(metrics)
    first, last = metrics[ks[0]], metrics[_final(metrics, accepted)]
    after = {s.prompt_id: s for s in last.samples}
    rows = []
    for s in first.samples:
        a = after.get(s.prompt_id)
        what = s.kind + (f" / {s.category}" if s.category else "")
        cells = [
            e(what),
            e(s.prompt),
            f"{e(s.answer)}<br><b>{e(s.outcome or NA)}</b>",
            NA if a is None else f"{e(a.answer)}<br><b>{e(a.outcome or NA)}</b>",
        ]
        rows.append("<tr>" + "".join(f'<td class="text">{c}</td>' for c in cells) + "</tr>")
    return (
        '<table id="samples" class="data samples"><thead><tr><th>prompt kind</th><th>prompt</th>'
        f"<th>{e(_label(ks[0]))}</th><th>{e(_label(last.iteration))}</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def judges_table(metrics: Mapping[int, Metrics]) -> str:
    """Each weak judge's and each ensemble's accuracy and Cohen's kappa against gold."""
    ks = [k for k in sorted(metrics) if metrics[k].judges]
    names: list[tuple[str, str]] = []
    for k in ks:
        for ja in metrics[k].judges:
            if (ja.objective, ja.name) not in names:
                names.append((ja.objective, ja.name))
    head = "".join(f"<th>{e(_label(k))} acc.</th><th>{e(_label(k))} κ</th>" for k in ks)
    rows = []
    for objective, name in names:
        cells = [f"<td>{e(name)}</td><td>{e(objective)}</td>"]
        for k in ks:
            j = next(
                (x for x in metrics[k].judges if (x.objective, x.name) == (objective, name)), None
            )
            cells.append(
                f"<td>{_num(None if j is None else j.accuracy)}</td>"
                f"<td>{_num(None if j is None else j.kappa, 2)}</td>"
            )
        bold = ' class="ensemble"' if name == "ensemble" else ""
        rows.append(f"<tr{bold}>" + "".join(cells) + "</tr>")
    return (
        '<table id="judges" class="data"><thead><tr><th>judge</th><th>objective</th>'
        f"{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def efficiency_chart(metrics: Mapping[int, Metrics], accepted: Mapping[int, bool]) -> str:
    """Gold attack success rate against the preference pairs spent so far."""
    ks = [k for k in sorted(metrics) if metrics[k].gold is not None]
    points: list[tuple[int, float]] = []
    spent = 0
    for k in ks:
        spent += metrics[k].pairs
        g = metrics[k].gold
        assert g is not None
        points.append((spent, g.attack_success_rate))
    top = max([p for p, _ in points] + [1])
    axes = Axes(0, top, 0.0, 1.0, height=H)
    body = axes.y_grid([0, 0.25, 0.5, 0.75, 1.0], lambda t: f"{round(100 * t):d}%")
    body += axes.frame("preference pairs trained on (cumulative)", "gold attack success rate")
    for p, _ in points:
        body.append(
            f'<text class="tick" x="{_f(axes.x(p))}" y="{_f(axes.bottom + 16)}" '
            f'text-anchor="middle">{p}</text>'
        )
    if len(points) >= 2:
        coords = " ".join(f"{_f(axes.x(p))},{_f(axes.y(v))}" for p, v in points)
        body.append(
            f'<polyline class="line" data-series="gold_asr" points="{coords}" fill="none" '
            'stroke="#D55E00" stroke-width="2.5"/>'
        )
    for k, (p, v) in zip(ks, points, strict=True):
        rolled_back = accepted.get(k) is False
        body.append(
            f'<circle class="pt-eff" data-iteration="{k}" cx="{_f(axes.x(p))}" '
            f'cy="{_f(axes.y(v))}" r="4.5" fill="{"#fff" if rolled_back else "#D55E00"}" '
            f'stroke="#D55E00" stroke-width="2"><title>{e(_label(k))}: {p} pairs, gold ASR '
            f"{e(_pct(v))}</title></circle>"
        )
    return chart_svg("chart-efficiency", "Gold attack success rate per pairs spent", body)


def calibration_table(metrics: Mapping[int, Metrics]) -> str:
    """Every judge against human labels (measured once, in iteration 0)."""
    first = metrics[min(metrics)]
    rows = []
    for c in first.calibration:
        acc = NA if c.accuracy is None else f"{100 * c.accuracy:.1f}%"
        kappa = NA if c.kappa is None else f"{c.kappa:.2f}"
        rows.append(
            f"<tr><td>{e(c.name)}</td><td>{e(c.objective)}</td><td>{e(c.role)}</td>"
            f"<td>{acc}</td><td>{kappa}</td><td>{c.n}</td></tr>"
        )
    return (
        '<table id="calibration" class="data"><thead><tr><th>judge</th><th>objective</th>'
        "<th>role</th><th>accuracy</th><th>κ</th><th>labels used</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def evaluator_table(metrics: Mapping[int, Metrics]) -> str:
    """The evaluation-only judges' held-out figures beside the training ensemble's."""
    rows = []
    for k in sorted(metrics):
        m = metrics[k]
        if m.evaluator is None:
            continue
        ev = m.evaluator
        rows.append(
            f"<tr><td>{e(_label(k))}</td>"
            f"<td>{100 * ev.attack_success_rate:.1f}%</td><td>{100 * m.attack_success_rate:.1f}%</td>"
            f"<td>{100 * ev.over_refusal:.1f}%</td><td>{100 * m.over_refusal:.1f}%</td>"
            f"<td>{ev.helpfulness:.3f}</td><td>{m.helpfulness:.3f}</td></tr>"
        )
    return (
        '<table id="evaluator" class="data"><thead><tr><th>iteration</th>'
        "<th>ASR (evaluation judges)</th><th>ASR (training judges)</th>"
        "<th>over-refusal (evaluation)</th><th>over-refusal (training)</th>"
        "<th>helpfulness (evaluation)</th><th>helpfulness (training)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
