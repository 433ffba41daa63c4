"""Teacher statistics logged beside the loss components; weight 0, so they train nothing.

For every supervised row i (position t, predicting token t+1), at the training temperature T:

    teacher_entropy_i = −Σ_v P(v) log P(v),   P = softmax(z_t / T)
    top1_agreement_i  = [argmax_v z_s(v) = argmax_v z_t(v)]

Dense teacher logits (``DenseLogits``) are built chunk by chunk over the shared vocabulary, like
the KD loss. For a stored or served top-k teacher (``TopKLogprobs``) P is the k entries plus the
tail bucket, re-tempered by T_c / T as the top-k loss does (``topk.topk_distributions``), and the
teacher's top-1 is its most probable stored id; a row without a teacher entry counts 0 for both.

The trainer divides the sums by N, so the logs show the mean entropy (nats) and the fraction of
rows where student and teacher agree: a teacher entropy near log V says T is too high, agreement
that stays flat while ``kd`` falls says the KD weight dominates nothing the student can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..signals import DenseLogits, StudentRows, TopKLogprobs
from .base import softcap
from .chunked import fused_linear_loss
from .terms import Component, TermOutput
from .topk import topk_distributions


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """−Σ p log p per row; −inf entries (absent) contribute 0."""
    return -(logp.exp() * logp.masked_fill(~torch.isfinite(logp), 0.0)).sum(-1)


def dense_stats(student: StudentRows, signal: DenseLogits, temperature: float, chunk_size: int | None = None):
    """``(Σ_i teacher_entropy_i, Σ_i top1_agreement_i)`` against dense teacher logits."""
    head, teacher = student.head, signal.head
    vocab = min(head.weight.shape[0], teacher.weight.shape[0], signal.vocab_size or 1 << 62)
    teacher_rows = signal.rows.to(teacher.weight.dtype)

    def chunk(student_logits, start, end):
        z_s = softcap(student_logits[:, :vocab].float(), head.softcap)
        z_t = F.linear(teacher_rows[start:end], teacher.weight[:vocab],
                       None if teacher.bias is None else teacher.bias[:vocab])
        z_t = softcap(z_t.float(), teacher.softcap)
        entropy = _entropy(F.log_softmax(z_t / temperature, dim=-1)).sum()
        agree = (z_s.argmax(-1) == z_t.argmax(-1)).float().sum()
        return torch.stack([entropy.new_zeros(()), entropy, agree])

    with torch.no_grad():
        bias = None if head.bias is None else head.bias.detach()
        _, parts = fused_linear_loss(student.rows.detach(), head.weight.detach(), chunk, bias, chunk_size)
    return parts[0], parts[1]


def topk_stats(student: StudentRows, signal: TopKLogprobs, temperature: float, chunk_size: int | None = None):
    """``(Σ_i teacher_entropy_i, Σ_i top1_agreement_i)`` against a stored or served top-k teacher."""
    head = student.head
    present = torch.isfinite(signal.logprobs).any(-1)
    placeholder = torch.full_like(signal.logprobs, -math.inf)
    placeholder[:, 0] = 0.0
    logprobs = torch.where(present[:, None], signal.logprobs.float(), placeholder)
    teacher_top1 = signal.ids.gather(1, logprobs.argmax(-1, keepdim=True)).squeeze(1)
    temper = signal.capture_temperature / temperature

    def chunk(student_logits, start, end):
        z_s = softcap(student_logits.float(), head.softcap)
        rows = slice(start, end)
        # only the teacher's side of topk_distributions is used (the student's is discarded)
        teacher, _ = topk_distributions(z_s, signal.ids[rows], logprobs[rows], "bucket", temper)
        entropy = torch.where(present[rows], _entropy(teacher), torch.zeros(()))
        agree = (z_s.argmax(-1) == teacher_top1[rows]) & present[rows]
        return torch.stack([entropy.new_zeros(()), entropy.sum(), agree.float().sum()])

    with torch.no_grad():
        bias = None if head.bias is None else head.bias.detach()
        _, parts = fused_linear_loss(student.rows.detach(), head.weight.detach(), chunk, bias, chunk_size)
    return parts[0], parts[1]


@dataclass(frozen=True)
class TeacherStatsTerm:
    """``teacher_entropy`` and ``top1_agreement`` (weight 0, logged under those names)."""

    temperature: float = 1.0
    chunk_size: int | None = None
    accepts = (DenseLogits, TopKLogprobs)
    components = (Component("teacher_entropy", 0.0, "teacher_entropy"),
                  Component("top1_agreement", 0.0, "top1_agreement"))

    def __call__(self, student: StudentRows, signal: DenseLogits | TopKLogprobs) -> TermOutput:
        stats = dense_stats if isinstance(signal, DenseLogits) else topk_stats
        entropy, agree = stats(student, signal, self.temperature, self.chunk_size)
        return TermOutput(student.rows.new_zeros((), dtype=torch.float32), torch.stack([entropy, agree]).float())
