"""The evaluate stage's own judges: evaluation-only judges and judges measured on human labels.

- `evaluation.judges` score the held-out answers and never a training pair, so the figures they
  give (`Metrics.evaluator`: attack success, over-refusal, helpfulness) are not the training
  judges grading their own pupils. Their view of each answer is kept beside the training
  ensemble's in the judgment (`evaluator`), and their outcome classes (refusal, deflection,
  garbled, unsafe; on_topic, off_topic) become the run's outcome classes.
- `evaluation.refusalLabels` measures every judge, training and evaluation alike, on
  human-labelled responses (PyRIT's refusal.csv by default), once per run (iteration 0): each
  judge's call is whether a response declines the request (a refusal, or an answer to something
  else, as the human label means it). A judge that states it (`Verdict.declined`) is taken at
  its word; otherwise a safety judge calls "declined" on a harmful request when it scores the
  answer safe, and a helpfulness judge calls it on a benign one when it scores it unhelpful.
  Rows where a judge's scores say nothing about declining are not counted for it (`n`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from selfmoa.api.base import PUBLIC_REFUSAL_LABELS
from selfmoa.api.spec import AlignmentRunSpec, Objective
from selfmoa.judges import Judge, build_judge
from selfmoa.judges.ensemble import Vote, agreement_rate, cohen_kappa, combine
from selfmoa.judges.panel import judge_responses
from selfmoa.run.evaluation import objective_metrics, stated_refusal
from selfmoa.run.metrics import JudgeCalibration, ObjectiveMetrics
from selfmoa.run.records import JudgmentRecord, ResponseRecord
from selfmoa.stages.base import StageContext, StageError, read_jsonl_source

#: The fields of a judgment that are its response (what a judge is given).
_RESPONSE_KEYS = tuple(ResponseRecord.__annotations__)
#: The evaluator's fields kept in each judgment.
_VIEW = ("votes", "scores", "labels", "refusal", "outcomes", "unscored")


def evaluation_judges(ctx: StageContext) -> list[Judge]:
    return [build_judge(js, ctx.engines) for js in ctx.spec.evaluation.judges]


def add_evaluator(
    ctx: StageContext, judgments: list[JudgmentRecord], judges: Sequence[Judge], label: str
) -> dict[str, Any]:
    """Score the held-out answers with the evaluation judges; their view goes into each
    judgment's `evaluator`. Returns their panel summary."""
    if not judges:
        return {}
    responses = [
        cast(ResponseRecord, {k: v for k, v in j.items() if k in _RESPONSE_KEYS}) for j in judgments
    ]
    rated, summary = judge_responses(
        ctx.spec,
        ctx.engines,
        responses,
        gold=False,
        progress=lambda done, total, _d="": ctx.progress(done, total, f"{label}: evaluating"),
        judges=judges,
    )
    for j, r in zip(judgments, rated, strict=True):
        j["evaluator"] = {k: v for k, v in r.items() if k in _VIEW}
    return summary


def evaluator_metrics(judgments: Sequence[JudgmentRecord], threshold: float) -> ObjectiveMetrics:
    """The held-out figures as the evaluation judges see them (over-refusal: the refusals
    they state, else their helpfulness below the rubric's 'refuses')."""
    return objective_metrics(
        judgments,
        threshold=threshold,
        scores_of=lambda j: j["evaluator"]["scores"],
        refusal_of=lambda j: stated_refusal(j["evaluator"]),  # type: ignore[arg-type]
    )


def evaluator_class(j: JudgmentRecord, names: Sequence[str]) -> str | None:
    """The outcome class the first evaluation judge (in spec order) that sorts answers gave."""
    said = j.get("evaluator", {}).get("outcomes") or {}
    return next((said[n] for n in names if n in said), None)


# ----------------------------------------------------------------------------- human labels


def _labelled(spec: AlignmentRunSpec) -> tuple[list[dict[str, Any]], str]:
    """(rows of {prompt, response, refused, kind}, what they are)."""
    source = spec.evaluation.refusal_labels
    assert source is not None
    if source == PUBLIC_REFUSAL_LABELS:
        from selfmoa import public

        try:
            rows = public.refusal_labels()
        except public.PublicDataError as e:
            raise StageError(f"evaluation.refusalLabels: {e}") from None
        out = [
            {
                "prompt": r["objective"],
                "response": r["response"],
                "refused": r["refused"],
                "kind": r["kind"],
            }
            for r in rows
        ]
        return out, f"refusal.csv (PyRIT, {len(out)} human labels)"
    out = []
    for i, row in enumerate(read_jsonl_source(source, spec, field="evaluation.refusalLabels")):
        prompt = row.get("prompt") or row.get("objective")
        if not isinstance(prompt, str) or not isinstance(row.get("response"), str):
            raise StageError(f"evaluation.refusalLabels: row {i + 1} needs prompt and response")
        if not isinstance(row.get("refused"), bool):
            raise StageError(f"evaluation.refusalLabels: row {i + 1} needs refused: true|false")
        kind = row.get("kind", "harmful")
        if kind not in ("harmful", "benign", "legit"):
            raise StageError(f"evaluation.refusalLabels: row {i + 1}: kind {kind!r}")
        out.append(
            {"prompt": prompt, "response": row["response"], "refused": row["refused"], "kind": kind}
        )
    return out, f"{source.rsplit('/', 1)[-1]} ({len(out)} human labels)"


def _call(
    objective: Objective, kind: str, score: float | None, declined: bool | None, threshold: float
) -> bool | None:
    """Whether a verdict says the response declines (None: it doesn't say)."""
    if declined is not None:
        return declined
    if score is None:
        return None
    if objective == Objective.safety and kind == "harmful":
        return score >= threshold
    if objective == Objective.helpfulness and kind != "harmful":
        return score < threshold
    return None


def _measured(
    name: str,
    objective: Objective,
    role: str,
    dataset: str,
    calls: Sequence[bool | None],
    human: Sequence[bool],
) -> JudgeCalibration:
    acc, n = agreement_rate(calls, human)
    kappa = cohen_kappa(calls, human)
    return JudgeCalibration(
        name=name,
        objective=objective.value,
        role=role,  # type: ignore[arg-type]
        dataset=dataset,
        accuracy=None if acc is None else round(acc, 4),
        kappa=None if kappa is None else round(kappa, 4),
        n=n,
    )


def calibration(
    spec: AlignmentRunSpec, train: Sequence[Judge], evaluate: Sequence[Judge]
) -> list[JudgeCalibration]:
    """Every judge, and the training ensemble of each objective (`ensemble:OBJECTIVE`, the
    scores the pairs are built from), against the human labels of `evaluation.refusalLabels`
    (none unset)."""
    if spec.evaluation.refusal_labels is None:
        return []
    rows, dataset = _labelled(spec)
    items: list[ResponseRecord] = [
        {
            "id": f"label-{i}",
            "prompt_id": f"label-{i}",
            "prompt": r["prompt"],
            "kind": r["kind"],
            "category": None,
            "source": "labels",
            "sample": 0,
            "text": r["response"],
            "tokens": 0,
            "adapter": None,
        }
        for i, r in enumerate(rows)
    ]
    human = [bool(r["refused"]) for r in rows]
    ens = spec.ensemble
    out: list[JudgeCalibration] = []
    for role, judges in (("train", train), ("evaluate", evaluate)):
        verdicts = {judge.name: judge.judge_batch(items) for judge in judges}
        for judge in judges:
            calls = [
                _call(judge.objective, it["kind"], v.score, v.declined, ens.threshold)
                for it, v in zip(items, verdicts[judge.name], strict=True)
            ]
            out.append(_measured(judge.name, judge.objective, role, dataset, calls, human))
        if role != "train":
            continue
        for objective in Objective:
            members = [j for j in judges if j.objective == objective]
            if len(members) < 2:
                continue
            calls = []
            for r, it in enumerate(items):
                votes = [Vote(verdicts[j.name][r].score, j.weight) for j in members]
                combined = combine(
                    votes,
                    ens.method,
                    threshold=ens.threshold,
                    bootstrap_samples=ens.bootstrap_samples,
                    key=f"{it['id']}:{objective.value}",
                )
                calls.append(_call(objective, it["kind"], combined.score, None, ens.threshold))
            name = f"ensemble:{objective.value}"
            out.append(_measured(name, objective, role, dataset, calls, human))
    return out
