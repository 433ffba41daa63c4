"""Offline top-k teacher logits: capture, codec, Parquet store, collator, Axolotl-KD interop.

The entry points used outside the library (``distill-data logits`` / ``import-axolotl-kd``):
``capture_teacher`` and ``import_axolotl_kd``; ``distill-data generate`` uses the free-space checks
(``diskspace``: ``DiskFullError``, ``check_room``, ``estimate_bytes``, ``is_disk_full``,
``removed_on_failure``).
"""

from __future__ import annotations

from .capture import CaptureStats, capture_teacher
from .diskspace import DiskFullError, check_room, estimate_bytes, is_disk_full, removed_on_failure
from .interop import import_axolotl_kd

__all__ = ["CaptureStats", "DiskFullError", "capture_teacher", "check_room", "estimate_bytes", "import_axolotl_kd",
           "is_disk_full", "removed_on_failure"]
