"""Fixtures of the export tests, reused from the training suite: its tiny model and fake
`selfmoa.tiny` (S3 buckets come from tests/conftest.py).

That conftest is loaded by file under a name of its own (every conftest is called `conftest`,
so importing one by name is unreliable); its fixtures are re-exported here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# trainutil (imported by the training conftest) and exportutil, importable in any import mode.
for folder in (TESTS / "training", HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_training = _load("selfmoa_tests_training_fixtures", TESTS / "training" / "conftest.py")

tiny_model = _training.tiny_model
fake_tiny = _training.fake_tiny
