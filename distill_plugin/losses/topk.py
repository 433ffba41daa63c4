"""Offline KD from a teacher's stored top-k log-probabilities, chunked like the online loss.

For every supervised row i (position t, predicting token t+1) the store gives the teacher's top-k
ids S_i and log-probs log p_j (j ∈ S_i) captured at temperature T_c. The student's log-probs at
the training temperature T are log q = log_softmax(z_s / T) over the full vocabulary, gathered at
S_i. Two ways to compare distributions that only cover S_i:

    bucket       add a (k+1)-th "tail" bucket holding the remaining mass on both sides,
                 p_tail = 1 − Σ_S p,  q_tail = 1 − Σ_S q   (computed as log(−expm1(logsumexp)))
    renormalize  renormalise both over S_i: p̂ = p / Σ_S p,  q̂ = q / Σ_S q

Re-tempering: stored log-probs at T_c become p^(T_c/T), renormalised over the same support
(the k entries, plus the tail bucket in ``bucket`` mode). It is exact for T = T_c and for
``renormalize``; with ``bucket`` and T ≠ T_c the tail is tempered as if it were one token.

The divergence (``divergences``) is then applied to those (k or k+1)-bucket distributions, and the
loss is assembled exactly like the online one (``kd.combine``): (kd_scale·Σ kd_i + ce_weight·Σ ce_i)/N.
Rows whose teacher entry is missing (log-prob −inf everywhere, e.g. a packed-document boundary)
contribute CE only. Padding slots inside k have log-prob −inf and are ignored on both sides.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .chunked import fused_linear_loss
from .divergences import divergence
from .kd import KDSettings, LossOutput, combine, softcap

TAIL_MODES = ("bucket", "renormalize")
TailMode = Literal[TAIL_MODES]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, stable at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_distributions(
    student_logp: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    tail: TailMode = "bucket",
    temper: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs over the teacher's top-k support (+ tail bucket).

    Args:
        student_logp: [n, V] student log-probs at the training temperature (fp32).
        teacher_ids / teacher_logp: [n, k] stored ids and log-probs (−inf marks padding).
        temper: T_c / T, the re-tempering exponent.
    Returns:
        ``(teacher, student)`` log-probs of shape [n, k+1] (bucket) or [n, k] (renormalize).
    """
    present = torch.isfinite(teacher_logp)
    student_k = student_logp.gather(1, teacher_ids).masked_fill(~present, -math.inf)
    if tail == "renormalize":
        teacher = F.log_softmax(teacher_logp * temper, dim=-1)
        return teacher, F.log_softmax(student_k, dim=-1)
    teacher = torch.cat([teacher_logp, log1mexp(torch.logsumexp(teacher_logp, -1, keepdim=True))], -1)
    if temper != 1.0:
        teacher = F.log_softmax(teacher * temper, dim=-1)
    student = torch.cat([student_k, log1mexp(torch.logsumexp(student_k, -1, keepdim=True))], -1)
    return teacher, student


def topk_kd_loss(
    student_rows: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    targets: torch.Tensor | None = None,
    settings: KDSettings = KDSettings(),
    tail: TailMode = "bucket",
    capture_temperature: float = 1.0,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
) -> LossOutput:
    """Fused, chunked sparse KD (+ optional CE) over stored top-k teacher targets.

    ``student_rows`` [N, H] and ``teacher_ids``/``teacher_logprobs`` [N, k] are the supervised rows
    in the same order (``select_rows`` on hidden states and on the collator's tensors).
    """
    if tail not in TAIL_MODES:
        raise ValueError(f"topk_tail must be one of {TAIL_MODES}, got {tail!r}")
    normalizer = normalizer if normalizer is not None else max(student_rows.shape[0], 1)
    inv_t, temper = 1.0 / settings.temperature, capture_temperature / settings.temperature
    has_teacher = torch.isfinite(teacher_logprobs).any(-1)
    # Rows without a teacher entry get a harmless placeholder so no NaN reaches the gradients.
    placeholder = torch.full_like(teacher_logprobs, -math.inf)
    placeholder[:, 0] = 0.0
    teacher_logprobs = torch.where(has_teacher[:, None], teacher_logprobs.float(), placeholder)

    def chunk_loss(student_logits, start, end):
        logits = softcap(student_logits.float(), student_softcap)
        student_logp = F.log_softmax(logits * inv_t, dim=-1)
        teacher, student = topk_distributions(
            student_logp, teacher_ids[start:end], teacher_logprobs[start:end], tail, temper
        )
        kd_rows = divergence(teacher, student, settings.divergence, settings.beta, settings.skew)
        kd_rows = torch.where(has_teacher[start:end], kd_rows, torch.zeros_like(kd_rows))
        return combine(kd_rows, logits, None if targets is None else targets[start:end], settings, normalizer)

    loss, parts = fused_linear_loss(student_rows, student_weight, chunk_loss, student_bias, chunk_size)
    return LossOutput(loss, parts[0], parts[1])
