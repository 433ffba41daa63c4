"""How a teacher and an untrained student relate before any training: agreement, correlation, KL, entropy.

Rows are the supervised positions of scored sequences, with the usual shift: row t (the final hidden
state at position t) predicts token t+1 (``losses.select_rows``). For every row, over the shared
vocabulary (the first ``vocab_size`` ids: lm_head padding rows of either model are cut, never
compared), with z the logits (``modeling.output_head``: weight, bias, logit soft-cap) and T the
temperature:

    P = softmax(z_teacher / T),  Q = softmax(z_student / T)                         (fp32)
    agreement    [argmax z_student = argmax z_teacher]        (invariant under T)
    correlation  Pearson correlation of the vectors P and Q over the vocabulary
                 = Σ_v (p_v − 1/V)(q_v − 1/V) / sqrt(Σ_v (p_v − 1/V)² · Σ_v (q_v − 1/V)²)
    kl           KL(P‖Q) = Σ_v p_v (log p_v − log q_v)       (forward KL, nats)
    divergence   D(P‖Q) of ``losses.divergences`` named by ``divergence`` (the recipe's loss term)
    teacher_entropy / student_entropy   H(P) = −Σ_v p_v log p_v,  H(Q)

Every reported value is a mean over rows (``PairStats``). The rows pass through the lm_heads a chunk
at a time (``losses.fused_linear_loss``, values only, chunk size ``losses.auto_chunk_size(V)`` by
default), so no [rows, V] tensor is built; the hidden states are computed once and scored at every
temperature asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..losses.chunked import fused_linear_loss, select_rows
from ..losses.divergences import divergence as divergence_rows
from ..losses.kd import softcap
from ..modeling import final_hidden_states, output_head
from ..signals import OutputHead
from .teacher_fit import ScoredSequence, completion_batch

# Order of the per-chunk sums (fused_linear_loss's first entry is its "objective": the divergence).
_FIELDS = ("divergence", "kl", "agreement", "correlation", "teacher_entropy", "student_entropy")


@dataclass(frozen=True)
class PairStats:
    """Means over ``rows`` supervised rows at ``temperature`` (module docstring; NaN with no row)."""

    temperature: float
    divergence: float
    kl: float
    agreement: float
    correlation: float
    teacher_entropy: float
    student_entropy: float
    rows: int
    vocab_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """H per row, with 0·log 0 = 0."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


def _correlation(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the rows of exp(logp) and exp(logq) (0 where one side is constant)."""
    p = logp.exp()
    p = p - p.mean(-1, keepdim=True)
    q = logq.exp()
    q = q - q.mean(-1, keepdim=True)
    denominator = (p.square().sum(-1) * q.square().sum(-1)).sqrt()
    return torch.where(denominator > 0, (p * q).sum(-1) / denominator.clamp_min(1e-30), 0.0)


def row_sums(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
             divergence: str = "forward_kl", beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """The six sums of ``_FIELDS`` over a chunk of rows of logits [n, V] (upcast to fp32 here)."""
    zt, zs = teacher_logits.float(), student_logits.float()
    logp, logq = F.log_softmax(zt / temperature, -1), F.log_softmax(zs / temperature, -1)
    rows = torch.stack([
        divergence_rows(logp, logq, divergence, beta, skew),
        divergence_rows(logp, logq, "forward_kl"),
        (zs.argmax(-1) == zt.argmax(-1)).float(),
        _correlation(logp, logq),
        _entropy(logp),
        _entropy(logq),
    ])
    return rows.sum(-1)


def _cut(head: OutputHead, vocab: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    return head.weight[:vocab], None if head.bias is None else head.bias[:vocab]


@torch.no_grad()
def pair_sums(student_rows: torch.Tensor, student_head: OutputHead, teacher_rows: torch.Tensor,
              teacher_head: OutputHead, temperature: float = 1.0, vocab_size: int | None = None,
              chunk_size: int | None = None, divergence: str = "forward_kl", beta: float = 0.5,
              skew: float = 0.1) -> torch.Tensor:
    """The sums of ``_FIELDS`` (float64, [6]) over the rows [N, H_s] / [N, H_t] of both models, which
    must be the same positions in the same order; chunk by chunk, over the first ``vocab_size`` ids
    (default: the smaller lm_head)."""
    vocab = min(student_head.weight.shape[0], teacher_head.weight.shape[0], vocab_size or 1 << 62)
    t_weight, t_bias = _cut(teacher_head, vocab)
    s_weight, s_bias = _cut(student_head, vocab)

    def chunk(student_logits, start, end):
        teacher_logits = softcap(F.linear(teacher_rows[start:end], t_weight, t_bias).float(), teacher_head.softcap)
        return row_sums(teacher_logits, softcap(student_logits.float(), student_head.softcap), temperature,
                        divergence, beta, skew)

    first, rest = fused_linear_loss(student_rows, s_weight, chunk, s_bias, chunk_size)
    return torch.cat([first.reshape(1), rest]).double().cpu()


def stats_from_sums(sums: torch.Tensor, rows: int, temperature: float, vocab_size: int) -> PairStats:
    means = (sums / rows).tolist() if rows else [float("nan")] * len(_FIELDS)
    return PairStats(temperature=temperature, rows=rows, vocab_size=vocab_size, **dict(zip(_FIELDS, means)))


@torch.no_grad()
def pair_stats(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    sequences: Sequence[ScoredSequence],
    temperatures: Sequence[float] = (1.0,),
    *,
    pad_id: int = 0,
    vocab_size: int | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew: float = 0.1,
) -> list[PairStats]:
    """``PairStats`` of ``student`` against ``teacher`` on the completion tokens of ``sequences``
    (``(prompt_ids, completion_ids)``, one tokenizer), one per temperature, in order.

    Each batch runs both forwards once; its rows are then scored at every temperature. The models may
    sit on different devices (the teacher's rows are moved to the student's). ``vocab_size``: pass
    ``len(tokenizer)`` so that lm_head padding is cut; default: the smaller lm_head.
    """
    s_head, t_head = output_head(student), output_head(teacher)
    vocab = min(s_head.weight.shape[0], t_head.weight.shape[0], vocab_size or 1 << 62)
    device = s_head.weight.device
    sums = torch.zeros(len(temperatures), len(_FIELDS), dtype=torch.float64)
    rows = 0
    for start in range(0, len(sequences), batch_size):
        batch = completion_batch(sequences[start : start + batch_size], pad_id)
        s_rows, targets, _ = select_rows(final_hidden_states(student, {k: v.to(device) for k, v in batch.items()}),
                                         batch["labels"].to(device))
        t_device = t_head.weight.device
        t_hidden = final_hidden_states(teacher, {k: v.to(t_device) for k, v in batch.items()})
        t_rows, _, _ = select_rows(t_hidden, batch["labels"].to(t_device))
        t_head_here = OutputHead(t_head.weight.to(device), None if t_head.bias is None else t_head.bias.to(device),
                                 t_head.softcap)
        rows += targets.numel()
        for i, temperature in enumerate(temperatures):
            sums[i] += pair_sums(s_rows, s_head, t_rows.to(device), t_head_here, temperature, vocab,
                                 chunk_size, divergence, beta, skew)
    return [stats_from_sums(sums[i], rows, t, vocab) for i, t in enumerate(temperatures)]


MAX_ENTROPY_FRACTION = 0.5


def suggest_temperature(stats: Sequence[PairStats], max_entropy_fraction: float = MAX_ENTROPY_FRACTION) -> tuple[float, str]:
    """``(T, why)``: the largest T whose mean teacher entropy stays at most ``f · log V``.

    H(softmax(z/T)) grows with T from the teacher's own entropy towards log V (uniform), so the rule
    keeps the softest teacher that still ranks its candidates: at f = ½ its effective support exp(H)
    is at most √V tokens (≈ 390 of 151,936). When no value qualifies the teacher is already that flat
    at the smallest T, which is returned.
    """
    if not stats:
        raise ValueError("no temperature was scored")
    fraction = max_entropy_fraction
    qualify = [s for s in stats if s.teacher_entropy <= fraction * math.log(s.vocab_size)]
    if qualify:
        best = max(qualify, key=lambda s: s.temperature)
        return best.temperature, (f"the largest T whose teacher entropy H_T ≤ {fraction:g}·log V "
                                  f"({fraction * math.log(best.vocab_size):.2f} nats): H = {best.teacher_entropy:.2f}")
    low = min(stats, key=lambda s: s.temperature)
    return low.temperature, (f"no T keeps the teacher entropy ≤ {fraction:g}·log V "
                             f"({fraction * math.log(low.vocab_size):.2f} nats); the smallest T scored")
