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
    plus uld_i on the full distributions.
    ce_i     = −log softmax(z_s)[target_i]            every supervised row, aligned or not (T = 1)

    loss = (kd_weight · T^{2·[temperature_squared]} · Σ_{aligned i} (uld_i + next_byte_i)
            + ce_weight · Σ_i ce_i) / N

Why the next byte and not the ids both vocabularies spell alike (TRL GOLD's hybrid, and ours before):
equal strings are different events when one side's tokens are finer. A byte-level teacher puts its
mass on ``5`` ("the text goes on with 5"); the student's ``5`` means "the token 5, not the longer
``5;`` my tokenizer writes for that text". Pulling the student's ``5`` up teaches it tokenisations
it never reads: in the quality benchmark such students greedy-decoded ``+``, ``0``, ``=`` one
character at a time where their tokenizer writes ``+4=``, and scored 0 % on every seed (SFT 13.9 %).
The next-byte distribution moves mass between the student's tokens only by what they spell first.

Normalisation: the sums run over *aligned spans* (one term per aligned row, whatever the span's
length in tokens) and are divided, like the logit loss, by N = the optimizer step's supervised
student-token count (``num_items_in_batch``), so gradient accumulation does not change the
objective. With identical tokenizers every supervised row is its own span, and ``uld_loss`` is then
the per-token mean, on the scale of the logit loss's ``kd_loss``. The logged components are
Σ next_byte_i / N, Σ uld_i / N and Σ ce_i / N.

Chunked like the logit loss (``chunked.fused_linear_loss``): per chunk of student rows the student
logits [chunk, V_s] and the aligned teacher logits [≤chunk, V_t] are built, never [B, T, V] of
either side; the sort is of one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..alignment.tokens import NUM_BYTE_CLASSES
from ..signals import AlignedLogits, StudentRows
from .chunked import fused_linear_loss
from .divergences import LOG_FLOOR, divergence
from .kd import KDSettings, combine, softcap
from .terms import Component, TermOutput

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


def next_byte_logprobs(logp: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[n, V] log-probs → [n, 257]: log Σ_{v: classes[v] = c} p(v) per class c (a segment
    logsumexp; an empty class is −inf, which ``divergence`` reads as probability 0)."""
    index = classes[: logp.shape[-1]].expand(logp.shape[0], -1)
    peak = logp.new_full((logp.shape[0], NUM_BYTE_CLASSES), float("-inf")).scatter_reduce(1, index, logp, "amax")
    peak = peak.detach().clamp_min(LOG_FLOOR)
    mass = torch.zeros_like(peak).scatter_add(1, index, (logp - peak.gather(1, index)).exp())
    return mass.log() + peak


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
        uld = sorted_l1(teacher_logp.exp(), student_logp.exp(), top_k)
        if mode == "hybrid":
            classes = signal.byte_classes
            next_byte = divergence(next_byte_logprobs(teacher_logp, classes.teacher),
                                   next_byte_logprobs(student_logp, classes.student),
                                   settings.divergence, settings.beta, settings.skew)
        else:
            next_byte = torch.zeros_like(uld)
        chunk_targets = None if targets is None else targets[start:end]
        objective, _, ce = combine(next_byte + uld, logits, chunk_targets, settings, normalizer)
        return torch.stack([objective, next_byte.detach().sum() / normalizer, uld.detach().sum() / normalizer, ce])

    s_bias = student_bias[:vocab_s] if student_bias is not None else None
    loss, parts = fused_linear_loss(student_rows, student_weight[:vocab_s], chunk_loss, s_bias, chunk_size)
    return CrossTokenizerOutput(loss, parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class CrossTokenizerTerms:
    """``uld`` (+ ``next_byte`` for hybrid), each weighted kd_weight·T², and ``ce`` (ce_weight), from one
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
        kd = (Component("next_byte", self.settings.kd_scale),) if self.mode == "hybrid" else ()
        return *kd, Component("uld", self.settings.kd_scale), Component("ce", self.settings.ce_weight)

    def __call__(self, student: StudentRows, signal: AlignedLogits) -> TermOutput:
        head = student.head
        out = cross_tokenizer_loss(
            student.rows, head.weight, signal, student.targets, self.settings, self.mode, self.top_k,
            normalizer=1.0, chunk_size=self.chunk_size, student_bias=head.bias, student_softcap=head.softcap,
        )
        parts = [out.next_byte, out.uld, out.ce] if self.mode == "hybrid" else [out.uld, out.ce]
        return TermOutput(out.loss, torch.stack(parts))
