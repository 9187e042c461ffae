"""The run's HTML report: one self-contained page, charts drawn as inline SVG.

No JavaScript, no external resources (a Content-Security-Policy forbids loading any), so the
page opens the same from a laptop, an S3 console or an air-gapped cluster. Every string that
comes from the run (titles, category names, stage names, spec values) goes through
`html.escape`; numbers are formatted here. The charts live in `report_svg`, the tables in
`report_tables`, the shared formats in `report_format`; this module assembles the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from selfmoa.run.metrics import Metrics
from selfmoa.run.report_efficacy import (
    calibration_table,
    efficiency_chart,
    evaluator_table,
    judges_table,
    outcome_chart,
    outcome_table,
    samples_table,
)
from selfmoa.run.report_format import MINUS, NA, e
from selfmoa.run.report_svg import (
    GOLD_SERIES,
    ROLLED_BACK,
    SERIES,
    H,
    W,
    category_chart,
    iteration_colours,
    plane_chart,
    trend_chart,
)
from selfmoa.run.report_tables import headline, metrics_table, spec_list, stage_table

__all__ = [
    "CSS",
    "GOLD_SERIES",
    "MINUS",
    "NA",
    "ROLLED_BACK",
    "SERIES",
    "H",
    "W",
    "category_chart",
    "e",
    "headline",
    "iteration_colours",
    "metrics_table",
    "plane_chart",
    "render_report",
    "spec_list",
    "stage_table",
    "trend_chart",
]

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
table.samples td.text{white-space:normal;text-align:left;vertical-align:top;max-width:260px}
tr.ensemble td{font-weight:600}
.barcell{width:40%}.hbar{display:inline-block;height:10px;background:#0072B2;border-radius:2px}
dl.spec{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.spec dt{font-weight:600}dl.spec dd{margin:0;font-family:ui-monospace,monospace;
overflow-wrap:anywhere}
"""


def _efficacy_sections(metrics: Mapping[int, Metrics], acc: Mapping[int, bool]) -> list[str]:
    """What the answers were (outcome classes, samples), how good the judges are, what the
    pairs bought: only the sections the metrics have data for."""
    ms = metrics.values()
    out = []
    if any(m.outcomes is not None for m in ms):
        out.append(
            "<section><h2>Outcome classes of the held-out answers</h2>"
            '<p class="muted">declined = refusal + safe redirect; a deflection answers another '
            "question; over-refusal = refusal of a benign or legit prompt.</p>"
            f'{outcome_chart(metrics)}<div class="scroll">{outcome_table(metrics)}</div>'
            "</section>"
        )
    if any(m.samples for m in ms):
        out.append(
            "<section><h2>Sample answers, before and after</h2>"
            f'<div class="scroll">{samples_table(metrics, acc)}</div></section>'
        )
    if any(m.evaluator is not None for m in ms):
        out.append(
            "<section><h2>Evaluation-only judges</h2>"
            '<p class="muted">The held-out figures of judges that made no training pair, beside '
            "the training judges' own.</p>"
            f'<div class="scroll">{evaluator_table(metrics)}</div></section>'
        )
    first = metrics[min(metrics)]
    if first.calibration:
        out.append(
            f"<section><h2>Judges on human labels: {e(first.calibration[0].dataset)}</h2>"
            '<p class="muted">How often each judge\'s call (the response declines the request, '
            "or not) is the person's; a safety judge calls only harmful requests, a helpfulness "
            "judge only benign ones, unless it states declines itself.</p>"
            f'<div class="scroll">{calibration_table(metrics)}</div></section>'
        )
    if any(m.judges for m in ms):
        out.append(
            "<section><h2>Weak judges against the gold judge</h2>"
            '<p class="muted">Accuracy and Cohen\'s κ of good/bad labels on the held-out '
            "answers.</p>"
            f'<div class="scroll">{judges_table(metrics)}</div></section>'
        )
    if sum(m.gold is not None for m in ms) >= 2:
        out.append(f"<section><h2>Data efficiency</h2>{efficiency_chart(metrics, acc)}</section>")
    return out


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
        parts += _efficacy_sections(metrics, acc)
    if stage_seconds is not None:
        parts.append(
            f'<section><h2>Stage wall times</h2><div class="scroll">{stage_table(stage_seconds)}'
            "</div></section>"
        )
    if spec_summary:
        parts.append(f"<section><h2>Configuration</h2>{spec_list(spec_summary)}</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
