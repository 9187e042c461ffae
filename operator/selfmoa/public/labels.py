"""PyRIT's human-labelled refusals: a yardstick for refusal and safety judges, not prompts.

`refusal.csv` (pyrit 1.1.0, MIT; `# dataset_version=1.2`) holds 105 (objective, response) pairs
with a human score: 1 when the response refuses or does not address the request (an off-topic
answer counts), 0 when it fulfils it. Rows are read as they are, in file order.

The `kind` of each row was set by this project, not by PyRIT: the objectives listed in
`data/refusal_benign_objectives.json` (26 of the 96 distinct ones: stories, recipes, science
questions) are ordinary, harmless requests and are `benign`; every other objective is `harmful`.
The kind says where a judge's "safe" means "refused": on a harmful objective a refusal is the
safe answer, on a benign one it is not, so a safety judge is measured on the harmful rows only.
"""

from __future__ import annotations

import csv
import io
import json
from functools import cache
from importlib import resources
from typing import Literal, TypedDict

from selfmoa.public.files import PublicDataError, read_text

NAME = "refusal-labels"
PATH = "datasets/scorer_evals/refusal_scorer/refusal.csv"
COLUMNS = ("objective", "assistant_response", "human_score", "data_type")
ROWS = 105
BENIGN_FILE = "refusal_benign_objectives.json"
LICENCE = "MIT (pyrit 1.1.0: pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv)"


class LabelledResponse(TypedDict):
    #: "refusal-labels-<index>", by the row's position in the file.
    id: str
    objective: str
    response: str
    #: The human label: the response refuses or does not address the objective.
    refused: bool
    #: The objective's kind, set by this project (see the module doc).
    kind: Literal["harmful", "benign"]


def benign_objectives() -> frozenset[str]:
    """The objectives of refusal.csv that this project labels benign (shipped package data)."""
    text = resources.files("selfmoa.public").joinpath("data", BENIGN_FILE).read_text("utf-8")
    return frozenset(json.loads(text))


@cache
def _labels() -> tuple[LabelledResponse, ...]:
    text = read_text("pyrit", PATH, NAME)
    # The first line is a `# dataset_version=...` comment; the CSV header follows it. Only that
    # line is skipped: responses span lines and may themselves start with '#'.
    if text.startswith("#"):
        text = text.split("\n", 1)[1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise PublicDataError(f"public set {NAME!r}: expected columns {list(COLUMNS)}")
    benign = benign_objectives()
    out: list[LabelledResponse] = []
    for i, row in enumerate(reader):
        if row["human_score"] not in ("0", "1"):
            raise PublicDataError(
                f"public set {NAME!r}: row {i} has human_score {row['human_score']!r}, not 0/1"
            )
        objective = row["objective"].strip()
        out.append(
            LabelledResponse(
                id=f"{NAME}-{i:04d}",
                objective=objective,
                response=row["assistant_response"],
                refused=row["human_score"] == "1",
                kind="benign" if objective in benign else "harmful",
            )
        )
    if len(out) != ROWS:
        raise PublicDataError(f"public set {NAME!r}: expected {ROWS} rows, found {len(out)}")
    unknown = benign - {r["objective"] for r in out}
    if unknown:
        # A stale label file would silently turn benign rows harmful; refuse instead.
        raise PublicDataError(
            f"public set {NAME!r}: {len(unknown)} benign objective(s) not in refusal.csv, "
            f"e.g. {sorted(unknown)[0]!r}"
        )
    return tuple(out)


def refusal_labels() -> list[LabelledResponse]:
    """Every row of PyRIT's refusal.csv, in file order (fresh dicts)."""
    return [r.copy() for r in _labels()]
