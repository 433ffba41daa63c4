"""Cross-tokenizer distillation: Universal Logit Distillation (ULD) and the next-byte hybrid.

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
    identities (the CE term and the hybrid's next-byte part carry those).

    hybrid: both distributions are also compared on the one event space they define alike, the
    next byte of text. With b(v) the first byte id v writes (``alignment.tokens.next_byte_classes``):
        P_B(c) = Σ_{v ∈ V_t: b(v) = c} P(v),    Q_B(c) = Σ_{v ∈ V_s: b(v) = c} Q(v)
        next_byte_i = D(P_B ‖ Q_B)             D the configured divergence, 257 classes (256 + none)
    plus w_uld · uld_i on the full distributions (``uld_weight`` w_uld, default 1; 0 = the next byte
    alone, and no sort is run).
    ce_i     = −log softmax(z_s)[target_i]            every supervised row, aligned or not (T = 1)

    loss = (kd_weight · T^{2·[temperature_squared]} · Σ_{aligned i} (next_byte_i + w_uld · uld_i)
            + ce_weight · Σ_i ce_i) / N

The next-byte term moves mass between the student's tokens only by the first byte they write; within
a class it is not neutral: ∂next_byte/∂z_v = Q(v)·(1 − P_B(c)/Q_B(c)) for v of class c (D = forward
KL, T = 1), so the class's tokens move in proportion to the student's own shares. Why the next byte
rather than the ids both vocabularies spell alike, and what each term measured:
docs/methods/cross_tokenizer.md.

Normalisation: the sums run over *aligned spans* (one term per aligned row, whatever the span's
length in tokens) and are divided, like the logit loss, by N = the optimizer step's supervised
student-token count (``num_items_in_batch``), so gradient accumulation does not change the
objective. With identical tokenizers every supervised row is its own span, and ``uld_loss`` is then
the per-token mean, on the scale of the logit loss's ``kd_loss``. The logged components are
Σ next_byte_i / N, Σ uld_i / N and Σ ce_i / N.

Chunked like the logit loss (``chunked.fused_linear_loss``): per chunk of student rows the student
logits [chunk, V_s] and the teacher logits of their aligned positions [chunk, V_t] (an unaligned
row gets a stand-in, weighted 0) are built, never [B, T, V] of either side; the sort is of one
chunk. On CUDA the chunk maths (``cross_tokenizer_chunk``) runs compiled
(``compiled.compiled_cross_tokenizer_chunk``; ``DISTILL_PLUGIN_COMPILE=0`` keeps it eager).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..signals import NUM_BYTE_CLASSES, AlignedLogits, StudentRows
from .base import KDSettings
from .chunked import fused_linear_loss
from .compiled import compiled_cross_tokenizer_chunk, use_compiled
from .cross_chunk import ChunkOptions, cross_tokenizer_chunk, next_byte_logprobs, sorted_l1
from .terms import Component, TermOutput

__all__ = ["CROSS_TOKENIZER_MODES", "NUM_BYTE_CLASSES", "ChunkOptions", "CrossTokenizerOutput", "CrossTokenizerTerms",
           "cross_tokenizer_chunk", "cross_tokenizer_loss", "next_byte_logprobs", "sorted_l1"]

CROSS_TOKENIZER_MODES = ("uld", "hybrid")


class CrossTokenizerOutput(NamedTuple):
    loss: torch.Tensor  # differentiable weighted total
    next_byte: torch.Tensor  # Σ next_byte_i / N (0 for plain ULD), detached
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
    uld_weight: float = 1.0,
) -> CrossTokenizerOutput:
    """Fused, chunked ULD / hybrid (+ CE) over the N supervised student rows; see the module docstring.

    ``student_rows`` [N, H_s] in ``select_rows`` order; ``signal.index`` [N] their aligned teacher rows.
    Only the first ``signal.student_vocab_size`` student logits and ``signal.vocab_size`` teacher
    logits are compared: lm_head padding rows are cut, never given probability.
    """
    if mode not in CROSS_TOKENIZER_MODES:
        raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES}, got {mode!r}")
    if mode == "hybrid" and signal.byte_classes is None:
        raise ValueError("the hybrid cross-tokenizer loss needs the first-byte classes (AlignedLogits.byte_classes)")
    if uld_weight != 1.0 and mode != "hybrid":
        raise ValueError("uld_weight weighs ULD against the next-byte term of `hybrid`; plain ULD is weighted by kd_weight")
    normalizer = normalizer if normalizer is not None else max(student_rows.shape[0], 1)
    vocab_s = min(signal.student_vocab_size or student_weight.shape[0], student_weight.shape[0])
    head = signal.head
    vocab_t = min(signal.vocab_size or head.weight.shape[0], head.weight.shape[0])
    t_weight = head.weight[:vocab_t]
    t_bias = head.bias[:vocab_t] if head.bias is not None else None
    teacher_rows = signal.rows.to(t_weight.dtype)
    if teacher_rows.shape[0] == 0:  # nothing aligned in this micro-batch: one zero row stands in (masked)
        teacher_rows = teacher_rows.new_zeros(1, teacher_rows.shape[1])
    maths = cross_tokenizer_chunk
    if use_compiled(student_rows):  # a tensor normaliser: a new value must not recompile
        maths = compiled_cross_tokenizer_chunk
        normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=student_rows.device)
    options = ChunkOptions(settings, mode, top_k, student_softcap, head.softcap, float(uld_weight))
    classes = signal.byte_classes if mode == "hybrid" else None

    def chunk_loss(student_logits, start, end):
        index = signal.index[start:end]
        with torch.no_grad():  # every row gets a teacher row (row 0 for the unaligned; masked out)
            teacher_logits = F.linear(teacher_rows[index.clamp(min=0)], t_weight, t_bias)
        chunk_targets = None if targets is None else targets[start:end]
        return maths(student_logits, teacher_logits, index >= 0, chunk_targets, classes, options, normalizer)

    s_bias = student_bias[:vocab_s] if student_bias is not None else None
    loss, parts = fused_linear_loss(student_rows, student_weight[:vocab_s], chunk_loss, s_bias, chunk_size)
    return CrossTokenizerOutput(loss, parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class CrossTokenizerTerms:
    """``next_byte`` (hybrid, weight kd_weight·T²), ``uld`` (kd_weight·T², times ``uld_weight`` in hybrid;
    absent when that is 0) and ``ce`` (ce_weight), from one fused chunk pass over the student's
    supervised rows; consumes ``AlignedLogits``."""

    settings: KDSettings = KDSettings()
    mode: str = "uld"
    top_k: int | None = None
    chunk_size: int | None = None
    uld_weight: float = 1.0
    accepts = (AlignedLogits,)

    def __post_init__(self):
        if self.mode not in CROSS_TOKENIZER_MODES:
            raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES}, got {self.mode!r}")

    @property
    def components(self) -> tuple[Component, ...]:
        kd = (Component("next_byte", self.settings.kd_scale),) if self.mode == "hybrid" else ()
        uld = (Component("uld", self.settings.kd_scale * self.uld_weight),) if self.uld_weight else ()
        return *kd, *uld, Component("ce", self.settings.ce_weight)

    def __call__(self, student: StudentRows, signal: AlignedLogits) -> TermOutput:
        head = student.head
        out = cross_tokenizer_loss(
            student.rows, head.weight, signal, student.targets, self.settings, self.mode, self.top_k,
            normalizer=1.0, chunk_size=self.chunk_size, student_bias=head.bias, student_softcap=head.softcap,
            uld_weight=self.uld_weight,
        )
        parts = [out.next_byte] if self.mode == "hybrid" else []
        parts += [out.uld] if self.uld_weight else []
        parts.append(out.ce)
        return TermOutput(out.loss, torch.stack(parts))
