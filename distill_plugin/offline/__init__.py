"""Offline top-k teacher logits: capture, codec, Parquet store, collator, Axolotl-KD interop.

The entry points used outside the library (``distill-data logits`` / ``import-axolotl-kd``):
``capture_teacher`` and ``import_axolotl_kd``.
"""

from __future__ import annotations

from .capture import CaptureStats, capture_teacher
from .interop import import_axolotl_kd

__all__ = ["CaptureStats", "capture_teacher", "import_axolotl_kd"]
