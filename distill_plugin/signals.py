"""What a teacher gives the losses (signals), what the student's forward gives them, and the batch keys.

A teacher *source* (``distill_plugin.teachers``) turns a batch into signals; a loss *term*
(``distill_plugin.losses.terms``) declares which signal kinds it accepts and consumes one. Every
signal holds the supervised rows only, in ``select_rows`` order: row i is position t of the batch,
whose distribution predicts token t+1 (``labels[b, t+1] != -100``).

    DenseLogits    final hidden states [N, H_t] + output head: the full teacher logits, built chunk
                   by chunk inside the fused loss, never materialised whole
    TopKLogprobs   the teacher's top-k ids and log-probs [N, k] stored at a capture temperature
    HiddenStates   the teacher's hidden states [N, H_t] at the mapped layers (hidden-state KD)

Cross-tokenizer alignments (ULD) are a further signal kind, added here when their term lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Batch keys: the trainer, the offline collator and the model-input filter all read these names.
LABELS = "labels"
NUM_ITEMS = "num_items_in_batch"
TOPK_IDS = "teacher_topk_ids"  # LongTensor [B, T, k]
TOPK_LOGPROBS = "teacher_topk_logprobs"  # FloatTensor [B, T, k], -inf where absent
TEACHER_REQUEST = "teacher_server_request"  # a read-ahead batch's pending server answer (teachers.server)
NON_MODEL_KEYS = (LABELS, NUM_ITEMS, TOPK_IDS, TOPK_LOGPROBS, TEACHER_REQUEST)  # never passed to model.forward
IGNORE_INDEX = -100


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
    document); losses give it CE only.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    capture_temperature: float = 1.0


@dataclass
class HiddenStates:
    """Teacher hidden states of the supervised rows: ``layers[h]`` [N, H_t] for each mapped index h."""

    layers: dict[int, torch.Tensor]
