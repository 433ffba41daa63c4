"""Distillation losses: divergences (the maths), the chunked fused-linear loop, and the losses."""

from .chunked import auto_chunk_size, fused_linear_loss, select_rows
from .divergences import DIVERGENCES, divergence, get_divergence
from .kd import KDSettings, LossOutput, online_kd_loss

__all__ = [
    "DIVERGENCES",
    "KDSettings",
    "LossOutput",
    "auto_chunk_size",
    "divergence",
    "fused_linear_loss",
    "get_divergence",
    "online_kd_loss",
    "select_rows",
]
