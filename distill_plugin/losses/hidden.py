"""Hidden-state KD: the student's intermediate representations match the teacher's.

For each layer pair p = (s, t) (``hidden.layer_map``) and supervised row i (position t predicting
token t+1, the rows of the logit loss), with x = P_p(h^S_{s,i}) the student state projected to the
teacher's width (``hidden.projector``; identity when widths match and ``hidden_projector: none``)
and y = h^T_{t,i} the teacher state, in fp32:

    mse             ℓ(x, y) = (1/H_t) Σ_d (x_d − y_d)²
    normalized_mse  ℓ(x, y) = (1/H_t) Σ_d (n(x)_d − n(y)_d)²,  n(v) = (v − mean(v)) / sqrt(var(v) + ε)
                    (layer-norm without affine parameters: scale-free, per row)
    cosine          ℓ(x, y) = 1 − x·y / max(‖x‖‖y‖, ε)

The term returns Σ_i (1/P) Σ_p ℓ(x_{p,i}, y_{p,i}) — a sum over rows, a mean over the P pairs — so
the trainer's division by N (the step's supervised-token count) gives the per-token mean, normalised
like the logit loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..signals import HiddenStates, StudentRows
from .terms import Component, TermOutput

HiddenLoss = Literal["cosine", "mse", "normalized_mse"]
EPS = 1e-6


def _standardise(v: torch.Tensor) -> torch.Tensor:
    return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + EPS)


ROW_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": lambda x, y: (x - y).pow(2).mean(-1),
    "normalized_mse": lambda x, y: (_standardise(x) - _standardise(y)).pow(2).mean(-1),
    "cosine": lambda x, y: 1 - F.cosine_similarity(x, y, dim=-1, eps=EPS),
}


def hidden_loss_sum(student: list[torch.Tensor], teacher: list[torch.Tensor], loss: str) -> torch.Tensor:
    """Σ_i (1/P) Σ_p ℓ(student[p]_i, teacher[p]_i) over P pairs of [N, H_t] rows, in fp32."""
    row_loss = ROW_LOSSES[loss]
    total = sum(row_loss(x.float(), y.float()).sum() for x, y in zip(student, teacher, strict=True))
    return total / len(student)


@dataclass(frozen=True, eq=False)
class HiddenTerm:
    """The ``hidden`` component (weight ``hidden_weight``) over the layer ``pairs``.

    ``projector`` maps each pair's student rows to the teacher's width (``hidden.projector``); it is
    trained with the student (``trainable``, at learning rate ``trainable_lr``; None: the
    student's) and saved apart from it.
    """

    pairs: tuple[tuple[int, int], ...]
    projector: nn.Module
    loss: HiddenLoss = "cosine"
    weight: float = 1.0
    trainable_lr: float | None = None
    accepts = (HiddenStates,)

    def __post_init__(self):
        if self.loss not in ROW_LOSSES:
            raise ValueError(f"hidden_loss must be one of {tuple(ROW_LOSSES)}, got {self.loss!r}")

    @property
    def components(self) -> tuple[Component, ...]:
        return (Component("hidden", self.weight),)

    @property
    def student_layers(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.pairs)

    @property
    def teacher_layers(self) -> tuple[int, ...]:
        return tuple(t for _, t in self.pairs)

    @property
    def trainable(self) -> nn.Module:
        return self.projector

    def __call__(self, student: StudentRows, signal: HiddenStates) -> TermOutput:
        projected = self.projector([student.layers[s] for s in self.student_layers])
        value = hidden_loss_sum(projected, [signal.layers[t] for t in self.teacher_layers], self.loss)
        return TermOutput(self.weight * value, value.detach().reshape(1))
