"""The cross-tokenizer chunk maths (``uld`` has the loss, its contract and the formulas): sorted-L1
ULD between the two sides' descending probabilities, the next-byte log-probs of the hybrid, and one
chunk's ``[objective, Σ next_byte_i, Σ uld_i, Σ ce_i] / N``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..signals import NUM_BYTE_CLASSES
from .base import KDSettings, combine, softcap
from .divergences import divergence


def _descending(probs: torch.Tensor, keys: torch.Tensor | None, top_k: int | None) -> torch.Tensor:
    """``probs`` sorted in descending order (or its k largest), ordered by ``keys``: any tensor ordered as
    ``probs`` (the raw logits, which softcap, 1/T and softmax map monotonically; in bf16 they sort
    about twice as fast as fp32 probabilities, and the order is the same, ties included)."""
    keys = probs if keys is None else keys
    k = min(top_k, probs.shape[-1]) if top_k else None
    order = keys.topk(k, dim=-1).indices if k else keys.argsort(dim=-1, descending=True)
    return probs.gather(-1, order)


def sorted_l1(teacher_p: torch.Tensor, student_p: torch.Tensor, top_k: int | None = None,
              teacher_keys: torch.Tensor | None = None, student_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Per row Σ_j |sort↓(teacher_p)_j − sort↓(student_p)_j|, zero-padded to the wider side (or to k).
    ``*_keys``: optional tensors that sort as the probabilities do (see ``_descending``)."""
    teacher = _descending(teacher_p, teacher_keys, top_k)
    student = _descending(student_p, student_keys, top_k)
    width = max(teacher.shape[-1], student.shape[-1])
    teacher = F.pad(teacher, (0, width - teacher.shape[-1]))
    student = F.pad(student, (0, width - student.shape[-1]))
    return (teacher - student).abs().sum(-1)


@contextmanager
def _full_fp32():
    """fp32 GEMMs in full precision here: TF32 (``tf32: true``) keeps 10 mantissa bits, which would
    blur the small classes' masses."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _ClassSums(torch.autograd.Function):
    """mass[n, c] = Σ_{v: classes[v] = c} probs[n, v], and its gradient g[n, classes[v]].

    On CUDA a GEMM with the one-hot [V, 257] (in full fp32, whatever the TF32 setting): a scatter-add
    of V entries into 257 slots per row serialises on atomics there (the hybrid's loss was 13× the
    logit loss at V = 152k on an H200). On CPU the scatter-add, which costs V adds per row instead of
    a 257-wide GEMM's 257·V multiply-adds."""

    @staticmethod
    def forward(ctx, probs, classes, gemm: bool):
        index = classes[: probs.shape[-1]]
        if gemm:
            onehot = F.one_hot(index, NUM_BYTE_CLASSES).to(probs.dtype)
            ctx.save_for_backward(onehot)
            with _full_fp32():
                mass = probs @ onehot
        else:
            ctx.save_for_backward(index)
            mass = probs.new_zeros(probs.shape[0], NUM_BYTE_CLASSES).scatter_add_(1, index.expand_as(probs), probs)
        ctx.gemm = gemm
        return mass

    @staticmethod
    def backward(ctx, grad_mass):
        (saved,) = ctx.saved_tensors
        if ctx.gemm:
            with _full_fp32():
                return grad_mass @ saved.t(), None, None
        return grad_mass.gather(1, saved.expand(grad_mass.shape[0], -1)), None, None


@torch.compiler.disable  # eager inside a compiled chunk: the GEMM's precision context is not traceable
def next_byte_logprobs(probs: torch.Tensor, classes: torch.Tensor, gemm: bool | None = None) -> torch.Tensor:
    """[n, V] probabilities → [n, 257] log-probs: log Σ_{v: classes[v] = c} p(v) per class c. (Probabilities
    in, as ULD already holds them: no second exp over [n, V].) An empty class (no id) is −inf, which
    ``divergence`` reads as probability 0, with zero gradient; a class whose mass underflows fp32 is
    floored at the smallest normal float instead, so it stays finite on both sides. ``gemm``: class
    sums as a GEMM (default: on CUDA), see ``_ClassSums``."""
    classes = classes.to(probs.device)
    gemm = probs.is_cuda if gemm is None else gemm
    mass = _ClassSums.apply(probs, classes, gemm)
    used = torch.zeros(NUM_BYTE_CLASSES, dtype=torch.bool, device=probs.device)
    used[classes[: probs.shape[-1]]] = True
    tiny = torch.finfo(mass.dtype).tiny
    return torch.where(used, mass.clamp_min(tiny).log(), float("-inf"))


class ChunkOptions(NamedTuple):
    """The chunk maths' non-tensor settings (hashable: ``torch.compile`` guards on them)."""

    settings: KDSettings
    mode: str
    top_k: int | None
    student_softcap: float | None
    teacher_softcap: float | None
    uld_weight: float = 1.0  # hybrid: relative to next_byte; 0 skips ULD (no sort)


def cross_tokenizer_chunk(student_logits, teacher_logits, aligned, targets, classes, options: ChunkOptions, normalizer):
    """``[objective, Σ next_byte_i, Σ uld_i, Σ ce_i] / normalizer`` for one chunk of student rows.

    ``student_logits`` [n, V_s] and ``teacher_logits`` [n, V_t] in the compute dtype, row i of each
    the aligned pair (``aligned`` [n] bool: rows without a teacher position count for CE only; their
    teacher row is a stand-in, weighted 0, so the chunk has one static shape and no host sync).
    Autograd flows to ``student_logits`` only.
    """
    settings, inv_t = options.settings, 1.0 / options.settings.temperature
    logits = softcap(student_logits.float(), options.student_softcap)
    with torch.no_grad():
        teacher_logp = F.log_softmax(softcap(teacher_logits.float(), options.teacher_softcap) * inv_t, dim=-1)
    student_logp = F.log_softmax(logits * inv_t, dim=-1)
    weight = aligned.to(logits.dtype)
    teacher_p, student_p = teacher_logp.exp(), student_logp.exp()
    if options.uld_weight:  # sorted by the raw (compute-dtype) logits: same order, faster sort (``_descending``)
        uld = sorted_l1(teacher_p, student_p, options.top_k, teacher_logits, student_logits.detach()) * weight
    else:
        uld = torch.zeros_like(weight)
    if options.mode == "hybrid":
        next_byte = divergence(next_byte_logprobs(teacher_p, classes.teacher),
                               next_byte_logprobs(student_p, classes.student),
                               settings.divergence, settings.beta, settings.skew) * weight
    else:
        next_byte = torch.zeros_like(uld)
    objective, _, ce = combine(next_byte + options.uld_weight * uld, logits, targets, settings, normalizer)
    return torch.stack([objective, next_byte.detach().sum() / normalizer, uld.detach().sum() / normalizer, ce])
