"""Chunk maths fused by ``torch.compile`` on CUDA, and an fp32-accumulating grad-weight GEMM.

On a GPU the chunked loss is bound by memory traffic, not by its GEMMs: run eagerly, every
elementwise step of the chunk maths (upcast, log-softmax, exp, subtract, scale, cast) is its own pass
over the fp32 [chunk, V] logits. Compiled, the same maths is a few row-wise kernels that read the
bf16 logits and write the bf16 gradient (measurements: ``docs/benchmarks.md``).

``forward_kl_chunk`` is the closed-form forward-KL (+ CE) chunk of ``kd.forward_kl_closed_form`` as
one pure function (inductor needs no in-place buffer reuse to keep memory flat). Over the chunk's
supervised rows (row t predicts token t+1), with q = softmax(z/T), p = softmax(z_t/T) and
c = softmax(z) (T = 1 for the hard-label term):

    kd  = Σ_rows Σ_v p (log p − log q)            ce = −Σ_rows log c[target]
    d(kd_coef·kd + ce_coef·ce)/dz = kd_coef·(q − p) + ce_coef·(c − onehot(target))

where ``kd_coef`` already holds the 1/T of the chain rule. On CPU the eager in-place version runs
instead (compiling costs seconds per shape there).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def forward_kl_chunk(student_logits, teacher_logits, targets, kd_coef, ce_coef, inv_t: float, teacher_cap, with_ce: bool):
    """``(kd_sum, ce_sum, grad)`` for one chunk; ``grad`` = d objective / d student_logits in their dtype.

    ``kd_coef`` / ``ce_coef`` are 0-d tensors (so a new normaliser does not recompile);
    ``teacher_cap`` is the teacher's logit soft-cap or None; ``targets`` is ignored unless ``with_ce``.
    """
    z = student_logits.float()
    log_q = F.log_softmax(z * inv_t, dim=-1)
    t = teacher_logits.float()
    if teacher_cap:
        t = teacher_cap * torch.tanh(t / teacher_cap)
    log_p = F.log_softmax(t * inv_t, dim=-1)
    p = log_p.exp()
    kd = (p * (log_p - log_q)).sum()
    grad = (log_q.exp() - p) * kd_coef
    if with_ce:
        log_c = log_q if inv_t == 1.0 else F.log_softmax(z, dim=-1)
        hit = torch.arange(z.shape[-1], device=z.device)[None, :] == targets[:, None]
        ce = -torch.where(hit, log_c, 0.0).sum()
        grad = grad + (log_c.exp() - hit.to(log_c.dtype)) * ce_coef
    else:
        ce = kd.new_zeros(())
    return kd, ce, grad.to(student_logits.dtype)


def use_compiled(tensor: torch.Tensor) -> bool:
    """Compile the chunk maths for CUDA tensors; ``DISTILL_PLUGIN_COMPILE=0`` turns it off."""
    return tensor.is_cuda and os.environ.get("DISTILL_PLUGIN_COMPILE", "1") != "0"


# Rows per chunk when compiled: the chunk holds only bf16 logits of both models and the bf16
# gradient (no fp32 copies), so chunks can be larger; fewer chunks = fewer grad-weight GEMMs.
COMPILED_CHUNK_ELEMENTS = 1 << 28


@functools.cache
def _compiled():
    return torch.compile(forward_kl_chunk)


def compiled_forward_kl_chunk(student_logits, teacher_logits, targets, *args):
    """``forward_kl_chunk`` through inductor; the row count is dynamic (it changes every batch),
    the vocabulary static (specialised kernels)."""
    for t in (student_logits, teacher_logits) + ((targets,) if targets is not None else ()):
        torch._dynamo.mark_dynamic(t, 0)
    return _compiled()(student_logits, teacher_logits, targets, *args)


@functools.cache
def _compiled_cross_tokenizer():
    from .cross_chunk import cross_tokenizer_chunk  # torch._dynamo loads with it: only when compiling

    return torch.compile(cross_tokenizer_chunk)


def compiled_cross_tokenizer_chunk(student_logits, teacher_logits, aligned, targets, *args):
    """``uld.cross_tokenizer_chunk`` through inductor (autograd through the compiled graph; the class
    sums of the hybrid stay eager), the row count dynamic. Eager, that chunk is a dozen separate
    passes over fp32 [chunk, V] buffers on each side (README › Cross-tokenizer distillation has the H200
    numbers)."""
    for t in (student_logits, teacher_logits, aligned) + ((targets,) if targets is not None else ()):
        torch._dynamo.mark_dynamic(t, 0)
    return _compiled_cross_tokenizer()(student_logits, teacher_logits, aligned, targets, *args)


@functools.cache
def _fp32_out_addmm(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.addmm(..., out_dtype=float32)`` works here (CUDA builds of torch ≥ 2.8)."""
    if dtype == torch.float32:
        return False
    try:
        a = torch.zeros(2, 2, device=device_type, dtype=dtype)
        c = torch.zeros(2, 2, device=device_type, dtype=torch.float32)
        torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def accumulate_grad_weight(grad_w: torch.Tensor, g: torch.Tensor, hidden: torch.Tensor) -> None:
    """``grad_w += gᵀ hidden`` into the fp32 accumulator.

    In fp32, and where the GEMM can write fp32 from bf16/fp16 inputs, it accumulates straight into
    ``grad_w`` (no [V, H] temporary, no rounding of each chunk's product to bf16); elsewhere the
    product is made in the compute dtype and added in place.
    """
    if g.dtype == grad_w.dtype:
        grad_w.addmm_(g.t(), hidden)
    elif _fp32_out_addmm(g.device.type, g.dtype):
        torch.addmm(grad_w, g.t(), hidden, out_dtype=torch.float32, out=grad_w)
    else:
        grad_w.add_(g.t() @ hidden)
