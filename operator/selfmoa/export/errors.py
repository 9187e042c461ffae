"""The two ways an export ends early, each one line for the person who asked for it."""

from __future__ import annotations

from selfmoa.api.exits import BadInput


class ExportError(BadInput):
    """Bad input (no run there, an iteration that was never evaluated, a bad URI, an --out in
    the way): exit code 2."""


class ExportFailed(Exception):
    """The input was right but the export could not be completed (an adapter that doesn't match
    its manifest, a model that doesn't load, a failed upload): exit code 1."""
