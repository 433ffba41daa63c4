"""The fault tests reuse the teacher-server helpers of ``tests/teachers`` (``served_teacher``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teachers"))
