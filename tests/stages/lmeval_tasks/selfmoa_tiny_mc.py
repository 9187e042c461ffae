"""Rows for the `selfmoa_tiny_mc` task, read from the JSONL file beside this module.

A `dataset_path: json` task would resolve a relative `data_files` path against the working
directory, not against the YAML, so a task shipped inside the repo loads its file by its own path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_suffix(".jsonl")


def load(**_: Any) -> Any:
    # lm-eval passes the task's metadata and dataset_kwargs here: this task needs neither.
    import datasets

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
