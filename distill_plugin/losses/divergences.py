"""Divergences between a teacher distribution P and a student distribution Q, row by row.

Every function takes fp32 log-probabilities ``teacher_logp`` (log P) and ``student_logp`` (log Q)
of shape [rows, support] and returns one value per row. The support is the full (shared) vocabulary
for online KD, or the teacher's top-k plus an optional tail bucket for offline KD: the maths is the
same, which is why both losses share this module.

    forward_kl        KL(P‖Q) = Σ p (log p − log q)                    mode covering (classic KD)
    reverse_kl        KL(Q‖P) = Σ q (log q − log p)                    mode seeking (MiniLLM)
    jsd (β)           β·KL(P‖M) + (1−β)·KL(Q‖M),  M = β·P + (1−β)·Q   generalised JSD (GKD)
                      β → 0 or 1 sends the interior formula to 0, so β = 0 is defined as forward KL
                      and β = 1 as reverse KL (the TRL GKD convention).
    skew_forward_kl   KL(P‖λ·P + (1−λ)·Q)                              DistiLLM skew KL
    skew_reverse_kl   KL(Q‖λ·Q + (1−λ)·P)                              DistiLLM skew reverse KL
    tvd               ½ Σ |p − q|                                       total variation distance

Zero-probability entries contribute 0 (the ``0·log 0 = 0`` convention). ``divergence`` clamps
log-probs at ``LOG_FLOOR`` first, so a ``-inf`` entry (masked vocabulary, padding inside a top-k) is
an exact zero probability whose gradient is 0, never NaN (−inf − −inf would poison backward).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

LOG_FLOOR = -1e4  # exp(-1e4) == 0 in fp32/fp64; far below any real log-prob
_BY_NAME: dict[str, Callable[..., torch.Tensor]] = {}


def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Make ``fn`` a divergence under its own name: the config's ``divergence`` choices, the README
    table and ``get_divergence`` all read this registry, so a new divergence is this one function
    (plus its float64 reference in ``tests/losses/reference.py``)."""
    _BY_NAME[fn.__name__] = fn
    return fn


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per row; terms with p = 0 contribute 0 even where log q = -inf."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), 0.0).sum(-1)


def _log_mixture(logp: torch.Tensor, logq: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1−w)·q), computed stably in the log domain."""
    return torch.logaddexp(logp + math.log(weight_p), logq + math.log1p(-weight_p))


@register
def forward_kl(teacher_logp, student_logp, **_):
    return _kl(teacher_logp, student_logp)


@register
def reverse_kl(teacher_logp, student_logp, **_):
    return _kl(student_logp, teacher_logp)


@register
def jsd(teacher_logp, student_logp, beta: float = 0.5, **_):
    if beta <= 0.0:
        return forward_kl(teacher_logp, student_logp)
    if beta >= 1.0:
        return reverse_kl(teacher_logp, student_logp)
    log_m = _log_mixture(teacher_logp, student_logp, beta)
    return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)


def _skew_kl(logp, logq, skew):
    """KL(P‖λP + (1−λ)Q); λ = 0 is KL(P‖Q), λ = 1 is 0."""
    if skew >= 1.0:
        return torch.zeros(logp.shape[:-1], device=logp.device)
    if skew <= 0.0:
        return _kl(logp, logq)
    return _kl(logp, _log_mixture(logp, logq, skew))


@register
def skew_forward_kl(teacher_logp, student_logp, skew: float = 0.1, **_):
    return _skew_kl(teacher_logp, student_logp, skew)


@register
def skew_reverse_kl(teacher_logp, student_logp, skew: float = 0.1, **_):
    return _skew_kl(student_logp, teacher_logp, skew)


@register
def tvd(teacher_logp, student_logp, **_):
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


DIVERGENCES = tuple(_BY_NAME)  # registration order: forward_kl first (the default)


def get_divergence(name: str) -> Callable[..., torch.Tensor]:
    """Look a divergence up by name; raises ``ValueError`` listing the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown divergence {name!r}; expected one of {', '.join(DIVERGENCES)}") from None


def divergence(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    name: str = "forward_kl",
    beta: float = 0.5,
    skew: float = 0.1,
) -> torch.Tensor:
    """Per-row divergence ``name`` between teacher and student log-probabilities (fp32)."""
    teacher_logp, student_logp = teacher_logp.clamp(min=LOG_FLOOR), student_logp.clamp(min=LOG_FLOOR)
    return get_divergence(name)(teacher_logp, student_logp, beta=beta, skew=skew)
