"""What the session's tiny build fixture returns (a module of its own: test modules cannot
import a conftest reliably, several share that name)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TinyBuild:
    path: Path
    cache: Path
    messages: list[str]
    seconds: float
