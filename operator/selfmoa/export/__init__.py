"""Exporting a run's result: the best accepted (or a chosen) iteration's LoRA adapter, or the
merged full model, in Hugging Face layout with a model card. Heavy libraries load only when a
model is merged."""

from __future__ import annotations

from selfmoa.export.core import ExportResult, export_run
from selfmoa.export.errors import ExportError, ExportFailed

__all__ = ["ExportError", "ExportFailed", "ExportResult", "export_run"]
