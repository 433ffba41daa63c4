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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..alignment.tokens import NUM_BYTE_CLASSES
from ..signals import AlignedLogits, StudentRows
from .chunked import fused_linear_loss
from .compiled import compiled_cross_tokenizer_chunk, use_compiled
from .divergences import divergence
from .kd import KDSettings, combine, softcap
from .terms import Component, TermOutput

CROSS_TOKENIZER_MODES = ("uld", "hybrid")


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


class CrossTokenizerOutput(NamedTuple):
    loss: torch.Tensor  # differentiable weighted total
    next_byte: torch.Tensor  # Σ next_byte_i / N (0 for plain ULD), detached
    uld: torch.Tensor  # Σ uld_i / N, detached
    ce: torch.Tensor  # Σ ce_i / N, detached


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
