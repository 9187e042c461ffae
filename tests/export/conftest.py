"""Fixtures of the export tests, reused from the training suite: its tiny model and fake
`selfmoa.tiny` (S3 buckets come from tests/conftest.py).

That conftest is loaded by file under a name of its own (every conftest is called `conftest`,
so importing one by name is unreliable); its fixtures are re-exported here.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# fakes, trainutil (imported by the training conftest) and exportutil, importable in any import
# mode.
for folder in (TESTS, TESTS / "training", HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fakes import load_file  # noqa: E402  (importable once tests/ is on the path)

_training = load_file("selfmoa_tests_training_fixtures", TESTS / "training" / "conftest.py")

tiny_model = _training.tiny_model
fake_tiny = _training.fake_tiny
