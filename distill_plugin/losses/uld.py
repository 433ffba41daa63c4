"""Cross-tokenizer distillation: Universal Logit Distillation (ULD) and the exact-match hybrid.

The student and the teacher tokenise the same text differently; ``alignment.spans`` pairs each
student row i (position p, predicting token p+1) with the teacher position q that predicts the same
continuation of the same text (a common token boundary), or with none. For an aligned row:

    P = softmax(z_t / T)  over the teacher vocabulary V_t,   Q = softmax(z_s / T)  over V_s

    uld_i    = Σ_j | sort↓(P)_j − sort↓(Q)_j |        j over max(V_t, V_s); the shorter vector is
                                                       padded with zero probabilities (an absent
                                                       token has probability 0 — padding in
                                                       probability space, never a zero logit)
               with ``top_k``: j over the k largest of each side only
    This is the Wasserstein-1 distance between the two distributions when the tokens are placed on
    a line by rank (Boizard et al., ULD): it needs no shared vocabulary, and it is invariant to
    which token holds which probability — it transfers the teacher's confidence profile, not token
    identities (the CE term and the hybrid's exact part carry those).

    hybrid (TRL GOLD-style): the vocabulary agreement map M (``alignment.tokens``) pairs ids whose
    strings are equal. On M the configured divergence D compares the teacher and student
    probabilities of the same strings, plus one tail bucket for the rest of the mass on each side:
        exact_i  = D( [P_M, 1 − ΣP_M] ‖ [Q_M, 1 − ΣQ_M] )
    and the ids outside M are compared by ULD on their (unrenormalised) probabilities:
        uld_i    = Σ_j | sort↓(P_{∉M})_j − sort↓(Q_{∉M})_j |
    ce_i     = −log softmax(z_s)[target_i]            every supervised row, aligned or not (T = 1)

    loss = (kd_weight · T^{2·[temperature_squared]} · Σ_{aligned i} (uld_i + exact_i)
            + ce_weight · Σ_i ce_i) / N

Normalisation: the sums run over *aligned spans* (one term per aligned row, whatever the span's
length in tokens) and are divided, like the logit loss, by N = the optimizer step's supervised
student-token count (``num_items_in_batch``), so gradient accumulation does not change the
objective. With identical tokenizers every supervised row is its own span, and ``uld_loss`` is then
the per-token mean, on the scale of the logit loss's ``kd_loss``. The logged components are
Σ uld_i / N, Σ exact_i / N and Σ ce_i / N.

Chunked like the logit loss (``chunked.fused_linear_loss``): per chunk of student rows the student
logits [chunk, V_s] and the aligned teacher logits [≤chunk, V_t] are built, never [B, T, V] of
either side; the sort is of one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..signals import AlignedLogits, StudentRows
from .chunked import fused_linear_loss
from .divergences import divergence
from .kd import KDSettings, combine, softcap
from .terms import Component, TermOutput
from .topk import log1mexp

CROSS_TOKENIZER_MODES = ("uld", "hybrid")


def sorted_l1(teacher_p: torch.Tensor, student_p: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Per row Σ_j |sort↓(teacher_p)_j − sort↓(student_p)_j|, zero-padded to the wider side (or to k)."""
    if top_k:
        teacher = teacher_p.topk(min(top_k, teacher_p.shape[-1]), dim=-1).values
        student = student_p.topk(min(top_k, student_p.shape[-1]), dim=-1).values
    else:
        teacher = teacher_p.sort(dim=-1, descending=True).values
        student = student_p.sort(dim=-1, descending=True).values
    width = max(teacher.shape[-1], student.shape[-1])
    teacher = F.pad(teacher, (0, width - teacher.shape[-1]))
    student = F.pad(student, (0, width - student.shape[-1]))
    return (teacher - student).abs().sum(-1)


def with_tail(logp: torch.Tensor) -> torch.Tensor:
    """[n, K] log-probs of part of a vocabulary → [n, K+1] with the remaining mass as a last bucket."""
    return torch.cat([logp, log1mexp(torch.logsumexp(logp, -1, keepdim=True))], -1)


def hybrid_rows(teacher_logp, student_logp, vocab_map, settings: KDSettings, top_k: int | None = None):
    """``(exact_i, uld_i)`` per row: divergence on the agreeing ids (+ tail), ULD on the others."""
    teacher = with_tail(teacher_logp[:, vocab_map.teacher])
    student = with_tail(student_logp[:, vocab_map.student])
    exact = divergence(teacher, student, settings.divergence, settings.beta, settings.skew)
    uld = sorted_l1(teacher_logp[:, vocab_map.teacher_other].exp(), student_logp[:, vocab_map.student_other].exp(), top_k)
    return exact, uld


class CrossTokenizerOutput(NamedTuple):
    loss: torch.Tensor  # differentiable weighted total
    exact: torch.Tensor  # Σ exact_i / N (0 for plain ULD), detached
    uld: torch.Tensor  # Σ uld_i / N, detached
    ce: torch.Tensor  # Σ ce_i / N, detached


def cross_tokenizer_loss(
    student_rows: torch.Tensor,
    student_weight: torch.Tensor,
    signal: AlignedLogits,
    targets: torch.Tensor | None = None,
    settings: KDSettings = KDSettings(),
    mode: str = "uld",
    top_k: int | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
) -> CrossTokenizerOutput:
    """Fused, chunked ULD / hybrid (+ CE) over the N supervised student rows; see the module docstring.

    ``student_rows`` [N, H_s] in ``select_rows`` order; ``signal.index`` [N] their aligned teacher rows.
    Only the first ``signal.student_vocab_size`` student logits and ``signal.vocab_size`` teacher
    logits are compared: lm_head padding rows are cut, never given probability.
    """
    if mode not in CROSS_TOKENIZER_MODES:
        raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES}, got {mode!r}")
    if mode == "hybrid" and signal.vocab_map is None:
        raise ValueError("the hybrid cross-tokenizer loss needs the vocabulary agreement map (AlignedLogits.vocab_map)")
    normalizer = normalizer if normalizer is not None else max(student_rows.shape[0], 1)
    vocab_s = min(signal.student_vocab_size or student_weight.shape[0], student_weight.shape[0])
    head = signal.head
    vocab_t = min(signal.vocab_size or head.weight.shape[0], head.weight.shape[0])
    t_weight = head.weight[:vocab_t]
    t_bias = head.bias[:vocab_t] if head.bias is not None else None
    teacher_rows = signal.rows.to(t_weight.dtype)
    inv_t = 1.0 / settings.temperature

    def chunk_loss(student_logits, start, end):
        logits = softcap(student_logits.float(), student_softcap)
        index = signal.index[start:end]
        aligned = index >= 0
        with torch.no_grad():
            z_t = softcap(F.linear(teacher_rows[index[aligned]], t_weight, t_bias).float(), head.softcap)
            teacher_logp = F.log_softmax(z_t * inv_t, dim=-1)
        student_logp = F.log_softmax(logits[aligned] * inv_t, dim=-1)
        if mode == "hybrid":
            exact, uld = hybrid_rows(teacher_logp, student_logp, signal.vocab_map, settings, top_k)
        else:
            uld = sorted_l1(teacher_logp.exp(), student_logp.exp(), top_k)
            exact = torch.zeros_like(uld)
        chunk_targets = None if targets is None else targets[start:end]
        objective, _, ce = combine(exact + uld, logits, chunk_targets, settings, normalizer)
        return torch.stack([objective, exact.detach().sum() / normalizer, uld.detach().sum() / normalizer, ce])

    s_bias = student_bias[:vocab_s] if student_bias is not None else None
    loss, parts = fused_linear_loss(student_rows, student_weight[:vocab_s], chunk_loss, s_bias, chunk_size)
    return CrossTokenizerOutput(loss, parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class CrossTokenizerTerms:
    """``uld`` (+ ``exact`` for hybrid), each weighted kd_weight·T², and ``ce`` (ce_weight), from one
    fused chunk pass over the student's supervised rows; consumes ``AlignedLogits``."""

    settings: KDSettings = KDSettings()
    mode: str = "uld"
    top_k: int | None = None
    chunk_size: int | None = None
    accepts = (AlignedLogits,)

    def __post_init__(self):
        if self.mode not in CROSS_TOKENIZER_MODES:
            raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES}, got {self.mode!r}")

    @property
    def components(self) -> tuple[Component, ...]:
        kd = (Component("exact", self.settings.kd_scale),) if self.mode == "hybrid" else ()
        return *kd, Component("uld", self.settings.kd_scale), Component("ce", self.settings.ce_weight)

    def __call__(self, student: StudentRows, signal: AlignedLogits) -> TermOutput:
        head = student.head
        out = cross_tokenizer_loss(
            student.rows, head.weight, signal, student.targets, self.settings, self.mode, self.top_k,
            normalizer=1.0, chunk_size=self.chunk_size, student_bias=head.bias, student_softcap=head.softcap,
        )
        parts = [out.exact, out.uld, out.ce] if self.mode == "hybrid" else [out.uld, out.ce]
        return TermOutput(out.loss, torch.stack(parts))
