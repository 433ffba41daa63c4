"""Online logit distillation: teacher and student logits built chunk by chunk from hidden states.

For every supervised row i (hidden state at position t, predicting token t+1 = ``targets[i]``):

    z_s = h_s W_sᵀ,  z_t = h_t W_tᵀ                     (compute dtype; vocab cut to the shared V)
    log P = log_softmax(z_t / T),  log Q = log_softmax(z_s / T)          (fp32)
    kd_i  = D(P‖Q)                                       (see ``divergences``)
    ce_i  = −log_softmax(z_s)[targets[i]]                (T = 1)

    loss = (kd_weight · T^{2·[temperature_squared]} · Σ_i kd_i + ce_weight · Σ_i ce_i) / N

N is the number of supervised tokens in the whole optimizer step (HF ``num_items_in_batch``) so
gradient accumulation and data parallelism do not change the objective. The reported ``kd`` and
``ce`` components are Σ kd_i / N and Σ ce_i / N, unweighted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import KDSettings, LossOutput, combine, softcap
from .chunked import auto_chunk_size, fused_linear_loss
from .compiled import COMPILED_CHUNK_ELEMENTS, compiled_forward_kl_chunk, use_compiled
from .divergences import divergence

# Elements per block of the CPU closed-form maths (``online_kd_loss``): 4 MiB per fp32 buffer, so
# the few buffers a block keeps alive fit in a server CPU's last-level cache.
CPU_BLOCK_ELEMENTS = 1 << 20

__all__ = ["KDSettings", "LossOutput", "combine", "forward_kl_closed_form", "online_kd_loss", "softcap"]


def forward_kl_closed_form(student_logits, teacher_logp, targets, settings: KDSettings, normalizer, out=None):
    """``[objective, kd, ce]`` and d objective / d logits for forward KL, without autograd.

    When ``student_logits`` does not require grad only ``[objective, kd, ce]`` is returned.
    ``teacher_logp`` is consumed (overwritten) to save a buffer; ``out`` (fp32, the logits' shape; it
    may be ``student_logits``' own storage, read before it is written) receives the gradient.

    With q = softmax(z/T) and p the teacher:  d KL(p‖q)/dz = (q − p)/T  and
    d CE/dz = softmax(z) − onehot(target). Skipping the chunk's autograd graph saves several
    fp32 [chunk, V] buffers and passes (forward KL is the default and most used divergence).
    """
    with torch.no_grad():
        inv_t = 1.0 / settings.temperature
        z = student_logits.float()
        student_logp = F.log_softmax(z * inv_t if inv_t != 1.0 else z, dim=-1)
        p = teacher_logp.exp()
        # Σ p (log p − log q), as one dot product per row (accurate); consumes teacher_logp's buffer.
        kd_rows = torch.linalg.vecdot(p, teacher_logp.sub_(student_logp))
        with_ce = targets is not None and targets.numel() > 0
        ce = ce_logp = None
        if with_ce:  # at T = 1 the CE log-probs are the KD log-probs: one log_softmax, not two
            ce_logp = student_logp if inv_t == 1.0 else F.log_softmax(z, dim=-1)
            ce = -ce_logp.gather(1, targets[:, None]).sum()
        parts = combine(kd_rows, z, targets, settings, normalizer, ce=ce)
        if not student_logits.requires_grad:  # values only (eval / no_grad): no gradient maths
            return parts
        kd_coef = settings.kd_scale * inv_t / normalizer
        use_ce = with_ce and settings.ce_weight > 0
        ce_coef = settings.ce_weight / normalizer
        q = torch.exp(student_logp, out=student_logp if out is None else out)  # no new buffer either way
        if use_ce and ce_logp is student_logp:  # T = 1: softmax(z) is q itself
            grad = q.mul_(kd_coef + ce_coef).sub_(p.mul_(kd_coef))
        else:
            grad = q.sub_(p).mul_(kd_coef)
            if use_ce:
                grad.add_(ce_logp.exp_().mul_(ce_coef))
        if use_ce:
            grad[torch.arange(len(targets), device=grad.device), targets] -= ce_coef
        return parts, grad.to(student_logits.dtype)


def _on(value, device) -> torch.Tensor:
    """A float or tensor as a 0-d fp32 tensor on ``device`` (``torch.full``: no blocking copy)."""
    if torch.is_tensor(value):
        return value.to(device=device, dtype=torch.float32)
    return torch.full((), float(value), device=device)


def online_kd_loss(
    student_rows: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_rows: torch.Tensor,
    teacher_weight: torch.Tensor,
    targets: torch.Tensor | None = None,
    settings: KDSettings = KDSettings(),
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
) -> LossOutput:
    """Fused, chunked online KD (+ optional CE) from final hidden states; see the module docstring.

    Args:
        student_rows / teacher_rows: [N, H_s] / [N, H_t] hidden states of the supervised rows
            (``select_rows``), in the same order for both models.
        student_weight / teacher_weight: lm_head weights [V_s, H_s] / [V_t, H_t].
        targets: [N] next-token ids for the CE term (None: no CE).
        normalizer: N of the module docstring; defaults to the number of rows.
        vocab_size: compare over the first ``vocab_size`` entries only; defaults to min(V_s, V_t).
            Checkpoints pad their embeddings to different sizes; padding rows are cut, never filled
            with zero logits (a zero logit is a real logit and would steal probability mass).
    """
    vocab = vocab_size or min(student_weight.shape[0], teacher_weight.shape[0])
    if vocab > min(student_weight.shape[0], teacher_weight.shape[0]):
        raise ValueError(f"vocab_size={vocab} exceeds an lm_head ({student_weight.shape[0]}, {teacher_weight.shape[0]})")
    normalizer = normalizer if normalizer is not None else max(student_rows.shape[0], 1)
    t_weight, t_bias = teacher_weight[:vocab], teacher_bias[:vocab] if teacher_bias is not None else None
    inv_t = 1.0 / settings.temperature

    closed_form = settings.divergence == "forward_kl" and not student_softcap

    compiled = closed_form and use_compiled(student_rows)
    if compiled:
        chunk_size = chunk_size or auto_chunk_size(vocab, COMPILED_CHUNK_ELEMENTS)
        # 0-d device tensors: a new normaliser neither recompiles nor copies host→device per chunk
        device = student_rows.device
        kd_coef = settings.kd_scale * inv_t / _on(normalizer, device)
        ce_coef = settings.ce_weight / _on(normalizer, device)

    def compiled_forward_kl(student_logits, teacher_logits, chunk_targets, teacher_cap):
        with_ce = chunk_targets is not None and chunk_targets.numel() > 0
        kd, ce, grad = compiled_forward_kl_chunk(
            student_logits, teacher_logits, chunk_targets, kd_coef, ce_coef, inv_t, teacher_cap, with_ce
        )
        objective = settings.kd_scale * kd + settings.ce_weight * ce
        return torch.stack([objective, kd, ce]) / normalizer, grad

    # CPU, eager closed form: the chunk's elementwise maths runs over blocks of rows small enough to
    # stay in cache across its passes (log-softmaxes, exp, difference, scale), instead of streaming
    # each [chunk, V] fp32 buffer through memory once per pass. The GEMMs keep the whole chunk.
    block = max(1, CPU_BLOCK_ELEMENTS // vocab) if closed_form and student_rows.device.type == "cpu" else None

    def teacher_logp_of(teacher_logits):
        with torch.no_grad():
            z = softcap(teacher_logits.float(), teacher_softcap)
            return F.log_softmax(z * inv_t if inv_t != 1.0 else z, dim=-1)

    def blocked_forward_kl(student_logits, start, end):
        """``forward_kl_closed_form`` block by block; the gradient overwrites the chunk's student logits."""
        with torch.no_grad():
            teacher_logits = F.linear(teacher_rows[start:end], t_weight, t_bias)
        grad = student_logits.detach()  # same storage: each block's logits are dead once its gradient exists
        in_place = grad.dtype == torch.float32  # the gradient is written straight into the block's logits
        total = None
        for i in range(0, end - start, block):
            j = min(i + block, end - start)
            block_targets = None if targets is None else targets[start + i:start + j]
            out = forward_kl_closed_form(student_logits[i:j], teacher_logp_of(teacher_logits[i:j]), block_targets,
                                         settings, normalizer, out=grad[i:j] if in_place else None)
            if student_logits.requires_grad:
                out, block_grad = out
                if not in_place:
                    grad[i:j] = block_grad
            total = out if total is None else total + out
        return (total, grad) if student_logits.requires_grad else total

    def chunk_loss(student_logits, start, end):
        chunk_targets = None if targets is None else targets[start:end]
        if block is not None and end - start > block:
            return blocked_forward_kl(student_logits, start, end)
        if compiled and end - start > 1:  # 0/1-row chunks (rare) stay eager: no extra specialisation
            with torch.no_grad():
                teacher_logits = F.linear(teacher_rows[start:end], t_weight, t_bias)
            return compiled_forward_kl(student_logits, teacher_logits, chunk_targets, teacher_softcap)
        with torch.no_grad():
            teacher_logp = teacher_logp_of(F.linear(teacher_rows[start:end], t_weight, t_bias))
        if closed_form:
            return forward_kl_closed_form(student_logits, teacher_logp, chunk_targets, settings, normalizer)
        logits = softcap(student_logits.float(), student_softcap)
        student_logp = F.log_softmax(logits * inv_t, dim=-1)
        kd_rows = divergence(teacher_logp, student_logp, settings.divergence, settings.beta, settings.skew)
        return combine(kd_rows, logits, chunk_targets, settings, normalizer)

    s_bias = student_bias[:vocab] if student_bias is not None else None
    loss, parts = fused_linear_loss(student_rows, student_weight[:vocab], chunk_loss, s_bias, chunk_size)
    return LossOutput(loss, parts[0], parts[1])
