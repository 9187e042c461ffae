"""Fixtures of the operator tests: a KMock cluster and the real Kopf operator against it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster, Operator, cluster_server


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with cluster_server() as c:
        yield c


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[Operator]:
    op = Operator(cluster)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()
