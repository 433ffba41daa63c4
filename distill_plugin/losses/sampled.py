"""Offline KD from a sampled store (Random Sampling KD): forward KL to an unbiased teacher estimate.

For every supervised row i (position t, predicting token t+1) a sampled store gives ids ``S_i`` and
the estimate ``p̂_j = (c_j / S) · w_j`` (j ∈ S_i; ``offline.sampled``) of the teacher's distribution
p at the capture temperature T_c, with ``E[p̂_j] = p_j`` over the draws for every id (0 off S_i).
With the student's ``log q = log_softmax(z_s / T)`` over the full vocabulary and T = T_c:

    kd_i = −Σ_{j ∈ S_i} p̂_j log q_j                     (cross-entropy to the estimate)
    ∂kd_i/∂z_s = ((Σ_j p̂_j) · q − p̂) / T                (p̂ as a vocabulary vector, 0 off S_i)

Both are linear in p̂, so ``E[kd_i] = H(p, q) = KL(p‖q) + H(p)`` and ``E[∂kd_i/∂z_s] = (q − p) / T``:
the forward-KL gradient of full distillation, in expectation (``Σ p̂ = 1`` exactly when the proposal is
the teacher). The logged ``kd`` is this cross-entropy, which exceeds the forward KL by the teacher's
entropy H(p), a constant of the data. The loss is assembled like the others (``kd.combine``):
(kd_scale·Σ kd_i + ce_weight·Σ ce_i)/N; rows without an entry (all −inf) contribute CE only.

What a sampled target cannot give unbiasedly, ``check_sampled`` refuses: every other divergence
(reverse KL, JSD, skew KLs, TVD) is nonlinear in p — it takes log p or mixes p inside a log or an
absolute value — so its value and gradient at p̂ are biased estimates of those at p; and a training
temperature T ≠ T_c would need p^(T_c/T) renormalised, also nonlinear in p.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .chunked import fused_linear_loss
from .kd import KDSettings, LossOutput, combine, softcap


def check_sampled(settings: KDSettings, capture_temperature: float) -> None:
    """Refuse the settings whose loss on a sampled target is a biased estimate (module docstring)."""
    if settings.divergence != "forward_kl":
        raise ValueError(f"divergence {settings.divergence!r} with a sampled store is biased (it is nonlinear in the "
                         "teacher's probabilities): use divergence forward_kl, or a top-k store")
    if not math.isclose(settings.temperature, capture_temperature, rel_tol=1e-9):
        raise ValueError(f"temperature {settings.temperature:g} with a sampled store captured at "
                         f"{capture_temperature:g} is biased (re-tempering is nonlinear in the teacher's "
                         f"probabilities): set temperature to {capture_temperature:g} or capture at {settings.temperature:g}")


def sampled_kd_loss(
    student_rows: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    targets: torch.Tensor | None = None,
    settings: KDSettings = KDSettings(),
    capture_temperature: float = 1.0,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
) -> LossOutput:
    """Fused, chunked KD (+ optional CE) on a sampled store's estimate (module docstring).

    ``student_rows`` [N, H] and ``teacher_ids``/``teacher_logprobs`` [N, S] (``log p̂``, −inf in empty
    slots) are the supervised rows in the same order, as for ``topk.topk_kd_loss``.
    """
    check_sampled(settings, capture_temperature)
    normalizer = normalizer if normalizer is not None else max(student_rows.shape[0], 1)
    inv_t = 1.0 / settings.temperature
    weights = torch.exp(teacher_logprobs.float())  # p̂; exp(−inf) = 0 for empty slots and absent rows

    def chunk_loss(student_logits, start, end):
        logits = softcap(student_logits.float(), student_softcap)
        student_logp = F.log_softmax(logits * inv_t, dim=-1)
        kd_rows = -(weights[start:end] * student_logp.gather(1, teacher_ids[start:end])).sum(-1)
        return combine(kd_rows, logits, None if targets is None else targets[start:end], settings, normalizer)

    loss, parts = fused_linear_loss(student_rows, student_weight, chunk_loss, student_bias, chunk_size)
    return LossOutput(loss, parts[0], parts[1])
