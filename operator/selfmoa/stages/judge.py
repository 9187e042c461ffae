"""judge: every weak judge scores every response; ensembles combine them per objective.

Reads respond/responses.jsonl, writes judgments.jsonl (one `JudgmentRecord` per response). The
scoring itself is `selfmoa.judges.panel.judge_responses`, shared with the evaluate stage.
"""

from __future__ import annotations

from typing import Any

from selfmoa.api.spec import AlignmentRunSpec, JudgeKind
from selfmoa.judges.panel import JudgeError, judge_responses
from selfmoa.run import layout
from selfmoa.run.records import ResponseRecord
from selfmoa.stages.base import StageContext, StageError, StageOutput

__all__ = ["judge_responses", "run", "wants_gold"]

_RESPONSE_FIELDS = ("id", "prompt_id", "prompt", "kind", "text")


def _check_rows(rows: list[dict[str, Any]]) -> list[ResponseRecord]:
    for i, row in enumerate(rows):
        missing = [f for f in _RESPONSE_FIELDS if f not in row]
        if missing:
            raise StageError(f"respond/{layout.RESPONSES} row {i + 1}: missing field(s) {missing}")
    return rows  # type: ignore[return-value]


def wants_gold(spec: AlignmentRunSpec) -> bool:
    return spec.evaluation.gold_judge or any(j.kind == JudgeKind.gold for j in spec.judges)


def run(ctx: StageContext, out: StageOutput) -> dict[str, Any]:
    responses = _check_rows(ctx.read_jsonl("respond", layout.RESPONSES))
    try:
        judgments, summary = judge_responses(
            ctx.spec, ctx.engines, responses, gold=wants_gold(ctx.spec), progress=ctx.progress
        )
    except JudgeError as e:
        raise StageError(str(e)) from None
    out.write_jsonl(layout.JUDGMENTS, judgments)  # type: ignore[arg-type]
    return summary
