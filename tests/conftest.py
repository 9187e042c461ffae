"""Session-wide settings for the whole suite.

Every test that needs the tiny base model (stages, engines, the loop, the operator's
lifecycle) finds it in one cache under the session's temp dir, so it is built once per session,
and subprocesses (`selfmoa run`, `selfmoa stage`) inherit the same cache through SELFMOA_CACHE.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SELFMOA_CACHE"] = str(tmp_path_factory.getbasetemp() / "selfmoa-cache")
