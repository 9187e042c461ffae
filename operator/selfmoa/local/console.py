"""What `selfmoa run` and `selfmoa stage` show: live progress, the final table, the report."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from selfmoa.api.spec import AlignmentRun, AlignmentRunSpec
from selfmoa.local.executor import Display, RunResult, StageEvent
from selfmoa.run import layout, outputs, planner, stage_table
from selfmoa.run.metrics import Metrics
from selfmoa.stages.base import Progress as ProgressFn
from selfmoa.store import Store


def describe(stage: str, summary: dict[str, Any]) -> str:
    """A few words on what a stage did, from its manifest summary."""

    def g(key: str) -> Any:
        return summary.get(key)

    if stage == "evaluate":
        if g("attack_success_rate") is None:
            return ""
        line = (
            f"ASR {g('attack_success_rate'):.2f}  helpfulness {g('helpfulness'):.2f}  "
            f"over-refusal {g('over_refusal'):.2f}"
        )
        extra = (
            ("eval ASR", "evaluator_attack_success_rate"),
            ("eval over-refusal", "evaluator_over_refusal"),
            ("validation ASR", "validation_attack_success_rate"),
            ("declined", "declined"),
            ("deflected", "deflection"),
            ("perplexity", "perplexity"),
            ("lm-eval score", "task_score"),
        )
        for label, key in extra:
            if isinstance(g(key), (int, float)):
                line += f"  {label} {g(key):.2f}"
        return line
    keys = stage_table.BY_NAME[stage].shows if stage in stage_table.BY_NAME else ()
    parts = []
    for k in keys:
        v = g(k)
        if isinstance(v, float):
            v = f"{v:.3f}"
        if v is not None and not isinstance(v, dict):
            parts.append(f"{k.replace('_', ' ')} {v}")
    if stage == "pairs":
        # What the policy sampled on attacks, and what the pairs train toward.
        outcomes = summary.get("outcomes") or {}
        for label, key in (("sampled", "sampled"), ("chosen", "chosen")):
            harmful = ((outcomes.get(key) or {}).get("by_kind") or {}).get("harmful") or {}
            if harmful:
                declined = sum(harmful.get(c, 0.0) for c in ("refusal", "redirect"))
                parts.append(f"{label} declined {100 * declined:.0f}%")
    if stage == "judge":
        means = summary.get("mean_scores") or {}
        parts += [f"mean {o} {v:.2f}" for o, v in means.items() if isinstance(v, (int, float))]
        bad = sum(v for v in (summary.get("unparsable") or {}).values() if isinstance(v, int))
        parts.append(f"unparsable {bad}")
    return "  ".join(parts)


class RichDisplay(Display):
    """One line per finished stage; a live bar for the stage running (TTY only)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None

    def __enter__(self) -> RichDisplay:
        if self.live:
            self.progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live:
            self.progress.stop()

    def stage_started(self, event: StageEvent) -> ProgressFn:
        label = f"iter {event.iteration} {event.stage:<8}"
        if not self.quiet and not self.live:
            self.console.print(f"  … {label} started", highlight=False)
        if not self.live:
            return _LineProgress(self.console, label) if not self.quiet else _noop
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("", total=None, label=label)

        def update(done: int, total: int, description: str = "") -> None:
            self.progress.update(
                self.task, completed=done, total=total or None, description=description
            )

        return update

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"  [dim]{message}[/dim]", highlight=False)

    def notice(self, message: str) -> None:
        # Shown even with --quiet: what happened to an earlier run's stages is never silent.
        self.console.print(f"selfmoa: {message}", highlight=False, markup=False, soft_wrap=True)

    def stage_finished(self, event: StageEvent) -> None:
        if self.live and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.quiet:
            return
        mark = "[dim]↷[/dim]" if event.skipped else "[green]✓[/green]"
        when = "done earlier" if event.skipped else f"{event.seconds:6.1f}s"
        self.console.print(
            f"  {mark} iter {event.iteration} {event.stage:<8} {when:>12}  [dim]{describe(event.stage, event.summary)}[/dim]"
        )


def _noop(done: int, total: int, description: str = "") -> None:
    return None


class _LineProgress:
    """Progress for logs (no TTY): a line at most every 10 seconds."""

    def __init__(self, console: Console | None, label: str) -> None:
        self.console = console
        self.label = label
        self.last = 0.0

    def __call__(self, done: int, total: int, description: str = "") -> None:
        now = time.monotonic()
        if now - self.last < 10 and done < total:
            return
        self.last = now
        line = f"    {self.label} {description} {done}/{total}"
        if self.console is not None:
            self.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)


def LogProgress(label: str) -> ProgressFn:
    return _LineProgress(None, label)


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def print_summary(run: AlignmentRun, result: RunResult) -> None:
    console = Console()
    if not console.is_terminal:
        # Logs and pipes get the whole table, not one cut to 80 columns.
        console = Console(width=160)
    console.print(_summary_table(run, result))
    for line in calibration_lines(result.metrics.get(0)):
        console.print(line)
    console.print(_stage_times_line(result))
    if result.status.message:
        console.print(f"{result.status.phase.value}: {result.status.message}")
    console.print(f"artifacts: {result.run_uri}/  report: {result.run_uri}/{layout.REPORT}")
    r = result.status.result
    if r is not None:
        what = r.adapter or "the base model (no adapter)"
        console.print(
            f"result: iteration {r.iteration} ({r.why}): {what}\n"
            f"  export it: selfmoa export {result.run_uri} --out DIR [--merge]"
        )


def _summary_table(run: AlignmentRun, result: RunResult) -> Table:
    """One row per evaluated iteration: the gate's figures, the held-out ones, the reference
    judge's, and whether the iteration was kept."""
    g = planner.gate(run.spec, result.metrics)
    table = Table(title=f"AlignmentRun {run.namespace}/{run.name}: {result.status.phase.value}")
    # Held-out figures report; "val ASR" is what the gate decided on. Outcome shares are of the
    # held-out answers to harmful prompts: declined = refused or safely redirected. The reference
    # columns are the gold judge's (tiny profile), else the evaluation-only judges'.
    ref = "eval" if any(m.evaluator for m in result.metrics.values()) else "gold"
    for col in (
        "iter",
        "val ASR",
        "ASR",
        "helpful",
        "over-ref",
        f"{ref} ASR",
        "declined",
        "deflect",
        "garbled",
        f"{ref} help",
        *([f"{ref} over-ref"] if ref == "eval" else []),
        "ppl",
        "pairs",
        "PGR",
        "kept",
        "wall time",
    ):
        table.add_column(col, justify="right")
    for k, m in sorted(result.metrics.items()):
        kept = "base" if k == 0 else ("yes" if g.accepted.get(k) else "rolled back")
        table.add_row(*_summary_row(k, m, result, kept=kept, ref=ref))
    return table


def _summary_row(k: int, m: Metrics, result: RunResult, *, kept: str, ref: str) -> list[str]:
    """The cells of iteration `k`'s row of the summary table."""
    secs = sum(
        v
        for key, v in result.stage_seconds.items()
        if key.startswith(layout.iteration_dir(k) + "/")
    )
    o = m.outcomes
    ref_m = m.gold or m.evaluator
    return [
        str(k),
        fmt(m.validation.attack_success_rate, True) if m.validation else "-",
        fmt(m.attack_success_rate, True),
        fmt(m.helpfulness),
        fmt(m.over_refusal, True),
        fmt(ref_m.attack_success_rate, True) if ref_m else "-",
        fmt(o.declined if o else None, True),
        fmt(o.deflection if o else None, True),
        fmt(o.garbled if o else None, True),
        fmt(ref_m.helpfulness) if ref_m else "-",
        *([fmt(ref_m.over_refusal, True) if ref_m else "-"] if ref == "eval" else []),
        _capability_cell(m),
        str(m.pairs),
        fmt(m.pgr),
        kept,
        f"{secs:.1f}s",
    ]


def _stage_times_line(result: RunResult) -> str:
    """Wall time summed per stage over the iterations, and the total."""
    stages: dict[str, float] = {}
    for key, v in result.stage_seconds.items():
        stage = key.split("/")[1]
        stages[stage] = stages.get(stage, 0.0) + v
    return (
        "wall time per stage: "
        + ", ".join(f"{s} {v:.1f}s" for s, v in stages.items())
        + f"  (total {sum(stages.values()):.1f}s)"
    )


def calibration_lines(m: Metrics | None) -> list[str]:
    """Each judge's accuracy on the human labels (measured in iteration 0), one line each."""
    if m is None or not m.calibration:
        return []
    out = [f"judges on {m.calibration[0].dataset} (declined or not, as a person labelled it):"]
    for c in m.calibration:
        kappa = "-" if c.kappa is None else f"{c.kappa:.2f}"
        out.append(
            f"  {c.name:<16} {c.objective:<11} {c.role:<8} accuracy {fmt(c.accuracy, True):>6}"
            f"  kappa {kappa:>5}  n {c.n}"
        )
    return out


def write_report(store: Store, spec: AlignmentRunSpec, result: RunResult) -> None:
    outputs.write_report(store, spec, result.metrics, result.stage_seconds)


def _capability_cell(m: Metrics) -> str:
    """The ppl column: perplexity where measured, else the mean lm-eval task score."""
    c = m.capability
    if c is None:
        return "-"
    if c.perplexity is not None:
        return f"{c.perplexity:.2f}"
    score = c.task_score
    return "-" if score is None else f"lm-eval {score:.3f}"
