"""What a teacher gives the losses (signals), what the student's forward gives them, and the batch keys.

A teacher *source* (``distill_plugin.teachers``) turns a batch into signals; a loss *term*
(``distill_plugin.losses.terms``) declares which signal kinds it accepts and consumes one. Every
signal holds the supervised rows only, in ``select_rows`` order: row i is position t of the batch,
whose distribution predicts token t+1 (``labels[b, t+1] != -100``).

    DenseLogits    final hidden states [N, H_t] + output head: the full teacher logits, built chunk
                   by chunk inside the fused loss, never materialised whole
    TopKLogprobs   the teacher's top-k ids and log-probs [N, k] stored at a capture temperature
    HiddenStates   the teacher's hidden states [N, H_t] at the mapped layers (hidden-state KD)
    AttentionMaps  the teacher's attention probabilities [N, H, T] of the supervised query rows at
                   the mapped decoder layers (attention transfer)
    AlignedLogits  cross-tokenizer KD: the teacher's final hidden states [M, H_t] at its positions
                   aligned to student rows (``alignment.spans``) + output head, and for each of the
                   N student rows the index of its teacher row (−1: no aligned teacher position)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Batch keys: the trainer, the offline collator and the model-input filter all read these names.
LABELS = "labels"
NUM_ITEMS = "num_items_in_batch"
TOPK_IDS = "teacher_topk_ids"  # LongTensor [B, T, k]
TOPK_LOGPROBS = "teacher_topk_logprobs"  # FloatTensor [B, T, k], -inf where absent
# Cross-tokenizer batches (``alignment.collator``): the teacher's own tokenisation and the aligned
# positions [B, A] (student position p, teacher position q; −1 = padding), see ``alignment.spans``.
TEACHER_INPUT_IDS = "teacher_input_ids"
TEACHER_ATTENTION_MASK = "teacher_attention_mask"
ALIGNED_STUDENT = "aligned_student_positions"
ALIGNED_TEACHER = "aligned_teacher_positions"
CROSS_TOKENIZER_KEYS = (TEACHER_INPUT_IDS, TEACHER_ATTENTION_MASK, ALIGNED_STUDENT, ALIGNED_TEACHER)
TEACHER_REQUEST = "teacher_server_request"  # a read-ahead batch's pending server answer (teachers.server)
# never passed to model.forward
NON_MODEL_KEYS = (LABELS, NUM_ITEMS, TOPK_IDS, TOPK_LOGPROBS, *CROSS_TOKENIZER_KEYS, TEACHER_REQUEST)
IGNORE_INDEX = -100
# Cross-tokenizer next-byte classes: 256 first bytes + OTHER (``alignment.tokens.next_byte_classes``).
NUM_BYTE_CLASSES = 257


@dataclass
class OutputHead:
    """What a loss needs of a model's output layer: logits = softcap(h Wᵀ + b)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    module: torch.nn.Module | None = None


@dataclass
class StudentRows:
    """The student's side of a micro-batch: supervised rows [N, H_s], next-token targets [N], head,
    and the rows of the hidden states a term asked for (``layers[h]`` [N, H_s], h as in
    ``hidden.layer_map``)."""

    rows: torch.Tensor
    targets: torch.Tensor
    head: OutputHead
    layers: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class DenseLogits:
    """Teacher final hidden states of the supervised rows [N, H_t] and its output head.

    ``vocab_size`` caps the compared vocabulary (the tokenizer's length), so lm_head padding rows
    of either model are cut, never compared.
    """

    rows: torch.Tensor
    head: OutputHead
    vocab_size: int | None = None


@dataclass
class TopKLogprobs:
    """Stored teacher top-k ids and log-probs [N, k] captured at ``capture_temperature``.

    A row whose log-probs are all -inf has no teacher entry (e.g. the last token of a packed
    document); losses give it CE only. ``sampled``: the rows come from a sampled store and hold the
    unbiased estimate ``log p̂`` (``offline.sampled``), trained by ``losses.sampled``.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    capture_temperature: float = 1.0
    sampled: bool = False


@dataclass
class HiddenStates:
    """Teacher hidden states of the supervised rows: ``layers[h]`` [N, H_t] for each mapped index h."""

    layers: dict[int, torch.Tensor]


@dataclass
class AttentionMaps:
    """Teacher attention probabilities of the supervised query rows: ``layers[l]`` [N, H, T] for
    each mapped decoder layer l (row i: query position t, ``select_rows`` order; over all T keys;
    H the teacher's heads, or already averaged in groups to the student's).

    ``mask`` is the [B, T-1] supervised mask that selected them (the student's rows are selected
    alike); ``keys`` [N, T] marks the key positions that count: k ≤ t and not padding.
    """

    layers: dict[int, torch.Tensor]
    mask: torch.Tensor
    keys: torch.Tensor


@dataclass
class AlignedLogits:
    """Cross-tokenizer teacher signal: teacher final hidden states of its aligned positions [M, H_t]
    and its head; ``index`` [N] gives, for each student row, its row in ``rows`` or −1.

    ``vocab_size`` / ``student_vocab_size`` are the two tokenizers' lengths (lm_head padding rows
    are cut); ``byte_classes`` (``alignment.tokens.NextByteClasses``) gives each id of both sides the
    first byte it writes, for the hybrid loss.
    """

    rows: torch.Tensor
    head: OutputHead
    index: torch.Tensor
    vocab_size: int | None = None
    student_vocab_size: int | None = None
    byte_classes: object | None = None
