"""Attention transfer: the student's attention distributions match the teacher's at mapped layers.

Rows (the shift convention of the logit loss). Query row i is position t of sequence b with
``labels[b, t+1] != -100`` — the position whose output predicts token t+1 (``supervised_mask``), in
``select_rows`` order. Its attention at decoder layer l and head h is a distribution over key
positions k: a_{l,h}(b, t, k) = softmax_k(q_t·k_k / √d + mask), zero at k > t and at padding. Keys
that count, K_i: k ≤ t and ``attention_mask[b, k] != 0``.

Heads (GQA-aware). H counts query heads (a GQA model's key/value heads are shared, its probabilities
are per query head). With H_s student heads and H_t = g·H_s teacher heads, student head h is
compared with the mean of teacher heads h·g … h·g+g−1 (a mean of distributions is a distribution):

    p̄_h = (1/g) Σ_{j<g} p_{h·g+j}

H_t not a multiple of H_s (H_t < H_s included) is refused (``check_heads``).

Loss: forward KL, KL(teacher ‖ student) — mode covering, as the logit loss's default — in fp32,
for each layer pair p = (s, t), row i and student head h, over K_i:

    KL_{p,i,h} = Σ_{k∈K_i} p̄_k (log p̄_k − log q_k)       q: the student's a_{s,h}(b, t, ·)

with p̄ log p̄ = 0 at p̄ = 0 and log q = log max(q, 2⁻¹²⁶) (a probability that underflowed to 0 gets
no gradient instead of an infinite loss). The term returns Σ_i (1/P) Σ_p (1/H_s) Σ_h KL_{p,i,h}:
a sum over rows, a mean over heads and pairs; the trainer's division by N (the step's
supervised-token count) makes it the per-row mean, normalised like the logit loss.

Memory: ``attention_kl_maps`` selects the rows from the student's whole [B, H_s, T, T] map (which
eager attention keeps for its own backward anyway) inside a checkpoint, so the fp32 [N, H, T]
buffers of the KL exist for one pair at a time and are recomputed in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..signals import AttentionMaps, StudentRows
from .terms import Component, TermOutput

TINY = torch.finfo(torch.float32).tiny


def check_heads(student_heads: int, teacher_heads: int) -> int:
    """The group size g = H_t / H_s; one line naming both counts when H_t is not a multiple of H_s."""
    if student_heads < 1 or teacher_heads % student_heads:
        raise ValueError(
            f"distill.attention_weight: the teacher's {teacher_heads} attention heads are not a multiple of the "
            f"student's {student_heads}; attention transfer averages groups of teacher heads, one group per student head"
        )
    return teacher_heads // student_heads


def query_rows(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H, T, T] probabilities → [N, H, T]: the query rows t with ``mask[b, t]`` ([B, T-1])."""
    return maps[:, :, :-1].transpose(1, 2)[mask]


def key_mask(mask: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[N, T] bool: for each supervised row (b, t) of ``mask`` [B, T-1], the keys k ≤ t that are not
    padding (``attention_mask[b, k] != 0``; None: no padding)."""
    batch, position = mask.nonzero(as_tuple=True)
    keys = torch.arange(mask.shape[1] + 1, device=mask.device)[None, :] <= position[:, None]
    if attention_mask is not None:
        keys &= attention_mask.to(mask.device)[batch] != 0
    return keys


def group_heads(teacher: torch.Tensor, student_heads: int) -> torch.Tensor:
    """[N, H_t, ...] → [N, H_s, ...]: each student head's mean of its g = H_t/H_s teacher heads
    (rows [N, H_t, T], or whole maps [B, H_t, T, T])."""
    g = check_heads(student_heads, teacher.shape[1])
    return teacher if g == 1 else teacher.unflatten(1, (student_heads, g)).mean(2)


def attention_kl_rows(student: torch.Tensor, teacher: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Σ_i (1/H_s) Σ_h KL(p̄_{i,h} ‖ q_{i,h}) over the keys ``keys`` [N, T], for one layer pair:
    ``student`` q [N, H_s, T], ``teacher`` p [N, H_t, T] (grouped to H_s heads), in fp32."""
    q = student.float()
    p = group_heads(teacher.float(), q.shape[1])
    kl = torch.xlogy(p, p) - p * torch.log(q.clamp_min(TINY))
    return kl.masked_fill(~keys[:, None, :], 0.0).sum() / q.shape[1]


def _pair_kl(maps: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return attention_kl_rows(query_rows(maps, mask), teacher, keys)


def attention_kl_maps(student_maps: Sequence[torch.Tensor], teacher_rows: Sequence[torch.Tensor], mask: torch.Tensor,
                      keys: torch.Tensor) -> torch.Tensor:
    """Σ_i (1/P) Σ_p (1/H_s) Σ_h KL over P pairs: ``student_maps[p]`` the student's whole [B, H_s, T, T]
    probabilities, ``teacher_rows[p]`` the teacher's [N, H_t, T] rows already selected by ``mask`` (H_t a
    multiple of H_s, or H_s when the capture averaged the groups already)."""
    total = 0.0
    for maps, teacher in zip(student_maps, teacher_rows, strict=True):
        if maps.requires_grad:  # the [N, H, T] fp32 buffers are rebuilt in the backward, one pair at a time
            total = total + checkpoint(_pair_kl, maps, mask, teacher, keys, use_reentrant=False)
        else:
            total = total + _pair_kl(maps, mask, teacher, keys)
    return total / len(student_maps)


@dataclass(frozen=True, eq=False)
class AttentionTerm:
    """The ``attention`` component (weight ``attention_weight``) over the decoder-layer ``pairs``.

    ``student_maps()`` returns the student's [B, H_s, T, T] probabilities of the micro-batch's
    forward, ``{student layer: maps}`` (captured by the method, ``methods.attention``); the signal
    holds the teacher's rows and the masks.
    """

    pairs: tuple[tuple[int, int], ...]
    student_maps: Callable[[], dict[int, torch.Tensor]]
    weight: float = 1.0
    accepts = (AttentionMaps,)

    @property
    def components(self) -> tuple[Component, ...]:
        return (Component("attention", self.weight),)

    def __call__(self, student: StudentRows, signal: AttentionMaps) -> TermOutput:
        maps = self.student_maps()
        value = attention_kl_maps([maps[s] for s, _ in self.pairs], [signal.layers[t] for _, t in self.pairs],
                                  signal.mask.to(student.rows.device), signal.keys.to(student.rows.device))
        return TermOutput(self.weight * value, value.detach().float().reshape(1))
