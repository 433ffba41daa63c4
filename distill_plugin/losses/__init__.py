"""Distillation losses: divergences (the maths), the chunked fused-linear loop, the fused losses,
and the loss terms the trainer runs (named, weighted components consuming teacher signals)."""

from .chunked import auto_chunk_size, fused_linear_loss, select_rows, supervised_mask
from .divergences import DIVERGENCES, divergence, get_divergence
from .kd import KDSettings, LossOutput, online_kd_loss
from .sampled import check_sampled, sampled_kd_loss
from .terms import Component, LogitTerms, LossTerm, TermOutput, run_terms
from .topk import TAIL_MODES, topk_kd_loss

__all__ = [
    "DIVERGENCES",
    "TAIL_MODES",
    "Component",
    "KDSettings",
    "LogitTerms",
    "LossOutput",
    "LossTerm",
    "TermOutput",
    "auto_chunk_size",
    "check_sampled",
    "divergence",
    "fused_linear_loss",
    "get_divergence",
    "online_kd_loss",
    "run_terms",
    "sampled_kd_loss",
    "select_rows",
    "supervised_mask",
    "topk_kd_loss",
]
