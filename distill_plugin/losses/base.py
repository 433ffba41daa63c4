"""What every logit-KD loss shares: its settings, the teacher/student soft-cap and how a chunk's
per-row KD terms and hard-label CE combine into ``[objective, kd, ce] / N``:

    objective = kd_weight · T^{2·[temperature_squared]} · Σ_i kd_i + ce_weight · Σ_i ce_i
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .divergences import get_divergence


@dataclass(frozen=True)
class KDSettings:
    """The maths knobs of a logit-KD loss (the pydantic config maps onto this)."""

    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    temperature_squared: bool = True

    def __post_init__(self):
        get_divergence(self.divergence)  # fail early on an unknown name
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def kd_scale(self) -> float:
        return self.kd_weight * (self.temperature**2 if self.temperature_squared else 1.0)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # differentiable weighted total
    kd: torch.Tensor  # Σ kd_i / N, detached
    ce: torch.Tensor  # Σ ce_i / N, detached (0 when no targets were given)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style final logit soft-capping, cap·tanh(z/cap); identity when ``cap`` is None."""
    return logits if not cap else cap * torch.tanh(logits / cap)


def combine(kd_rows, student_logits, targets, settings: KDSettings, normalizer, ce=None) -> torch.Tensor:
    """``[objective, kd, ce]`` for one chunk, each already divided by ``normalizer``.

    Shared by the online and the offline (top-k) losses: both reduce to per-row KD terms plus the
    hard-label CE on the same fp32 student logits (``ce``: the summed CE when already computed).
    """
    kd = kd_rows.sum()
    if ce is None and targets is not None and targets.numel():
        with torch.set_grad_enabled(torch.is_grad_enabled() and settings.ce_weight > 0):
            ce = F.cross_entropy(student_logits, targets, reduction="sum")
    elif ce is None:
        ce = kd.new_zeros(())
    objective = settings.kd_scale * kd + settings.ce_weight * ce
    return torch.stack([objective, kd.detach(), ce.detach()]) / normalizer
