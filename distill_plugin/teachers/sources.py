"""Teacher sources: turn a batch into teacher signals (``distill_plugin.signals``) for the loss terms.

    TeacherModelSource   a frozen teacher model run on the student's exact batch (same input_ids,
                         attention_mask and position_ids, so sample packing is identical)
                         → DenseLogits (final hidden states of the supervised rows + lm_head),
                         and HiddenStates at the layers a hidden-state term asked for
    StoredTopKSource     top-k log-probs captured offline, put in the batch by the offline
                         collator (``distill_plugin.offline.collator``) → TopKLogprobs
    AlignedTeacherSource a frozen teacher run on its OWN tokenisation of the same text (cross-tokenizer
                         KD), put in the batch by ``alignment.collator`` → AlignedLogits (its final
                         hidden states at the positions aligned to student rows + lm_head)
    CombinedSources      several sources, e.g. stored top-k logits + an online teacher for
                         hidden-state KD

``signals(inputs, mask)`` takes the batch and the [B, T-1] supervised mask (``supervised_mask``)
and returns ``{signal kind: signal}`` with rows in the same order as the student's rows. Sources
compute no loss; they run before the student's forward, under ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..hidden.capture import hidden_rows
from ..modeling import final_hidden_states, output_head
from ..signals import (ALIGNED_STUDENT, ALIGNED_TEACHER, TEACHER_ATTENTION_MASK, TEACHER_INPUT_IDS, TOPK_IDS,
                       TOPK_LOGPROBS, AlignedLogits, DenseLogits, HiddenStates, OutputHead, TopKLogprobs)


class TeacherSource(Protocol):
    produces: tuple[type, ...]

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]: ...


class TeacherModelSource:
    """A frozen teacher model (``teachers.load_teacher``) run on the student's batch.

    ``logits=False``: hidden states only (its logits come from elsewhere, e.g. offline top-k).
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int | None = None, logits: bool = True,
                 device: torch.device | str | None = None):
        self.model = model
        self.vocab_size = vocab_size  # the tokenizer's length: lm_head padding rows are never compared
        self.logits = logits
        self.hidden_layers: tuple[int, ...] = ()
        self.teacher_device = output_head(model).weight.device
        # Where the loss runs (the student's device). A teacher elsewhere (`distill.teacher_device`)
        # sends its rows there, and its lm_head is copied there once: the fused loss builds teacher
        # logits chunk by chunk beside the student's.
        self.device = torch.device(device) if device is not None else self.teacher_device
        self._head = output_head(model)
        if self.device != self.teacher_device:
            head = self._head
            self._head = OutputHead(head.weight.detach().to(self.device),
                                    None if head.bias is None else head.bias.detach().to(self.device), head.softcap)

    @property
    def produces(self) -> tuple[type, ...]:
        return ((DenseLogits,) if self.logits else ()) + ((HiddenStates,) if self.hidden_layers else ())

    def request_hidden(self, layers) -> None:
        """Also deliver ``HiddenStates`` at these hidden-state indices (``hidden.layer_map``)."""
        self.hidden_layers = tuple(sorted(set(layers)))

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        if self.device != self.teacher_device:
            inputs = {k: v.to(self.teacher_device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            rows, layers = hidden_rows(self.model, inputs, mask.to(self.teacher_device), self.hidden_layers)
        out = {DenseLogits: DenseLogits(rows.to(self.device), self._head, self.vocab_size)} if self.logits else {}
        if self.hidden_layers:
            out[HiddenStates] = HiddenStates({h: r.to(self.device) for h, r in layers.items()})
        return out


class AlignedTeacherSource(TeacherModelSource):
    """The teacher on its own tokens (``teacher_input_ids``/``teacher_attention_mask``) and the
    aligned positions [B, A] of the cross-tokenizer collator → ``AlignedLogits``.

    Student row of (b, p): its rank among the supervised positions in ``select_rows`` order (row-major
    cumulative count of the mask), so ``index[row] = k`` for the k-th aligned pair — all tensor ops.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int | None, student_vocab_size: int | None,
                 byte_classes=None, device: torch.device | str | None = None):
        super().__init__(model, vocab_size, logits=True, device=device)
        self.student_vocab_size = student_vocab_size
        # moved to the loss's device once, not per batch
        self.byte_classes = (type(byte_classes)(*(t.to(self.device) for t in byte_classes))
                             if byte_classes is not None else None)

    @property
    def produces(self) -> tuple[type, ...]:
        return (AlignedLogits,)

    def request_hidden(self, layers) -> None:
        raise ValueError("hidden-state KD across tokenizers is not supported (the layers' positions differ)")

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        try:
            ids, attention = inputs[TEACHER_INPUT_IDS], inputs[TEACHER_ATTENTION_MASK]
            student_pos, teacher_pos = inputs[ALIGNED_STUDENT].to(mask.device), inputs[ALIGNED_TEACHER]
        except KeyError:
            raise KeyError(
                f"cross-tokenizer batch has no {TEACHER_INPUT_IDS}/{ALIGNED_STUDENT}: the cross-tokenizer collator "
                "was not used (is `distill.cross_tokenizer` set and the plugin listed in `plugins:`?)"
            ) from None
        teacher_inputs = {"input_ids": ids.to(self.teacher_device), "attention_mask": attention.to(self.teacher_device)}
        with torch.no_grad():
            hidden = final_hidden_states(self.model, teacher_inputs)
        pair = student_pos >= 0
        batch = torch.arange(pair.shape[0], device=mask.device)[:, None].expand_as(pair)[pair]
        positions = student_pos[pair]
        if not bool(mask[batch, positions].all()):
            raise ValueError("cross-tokenizer alignment names a student position whose next token is not supervised")
        row_of = mask.flatten().long().cumsum(0).view(mask.shape) - 1
        index = torch.full((int(mask.sum()),), -1, dtype=torch.long, device=mask.device)
        index[row_of[batch, positions]] = torch.arange(len(positions), device=mask.device)
        rows = hidden[batch.to(hidden.device), teacher_pos.to(hidden.device)[pair.to(hidden.device)]]
        return {AlignedLogits: AlignedLogits(rows.to(self.device), self._head, index.to(self.device),
                                             self.vocab_size, self.student_vocab_size, self.byte_classes)}


class StoredTopKSource:
    """Stored top-k teacher log-probs, delivered per batch by the offline collator.

    The collator's entry [b, t] is the distribution at position t predicting t+1, the same
    convention as the hidden states, so the same mask selects both.
    """

    produces = (TopKLogprobs,)

    def __init__(self, capture_temperature: float = 1.0, sampled: bool = False):
        self.capture_temperature, self.sampled = capture_temperature, sampled

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        try:
            ids, logprobs = inputs[TOPK_IDS], inputs[TOPK_LOGPROBS]
        except KeyError:
            raise KeyError(
                f"offline KD batch has no {TOPK_IDS}/{TOPK_LOGPROBS}: the offline collator was not used "
                "(is `distill.teacher_logits` set and the plugin listed in `plugins:`?)"
            ) from None
        return {TopKLogprobs: TopKLogprobs(ids[:, :-1][mask], logprobs[:, :-1][mask], self.capture_temperature,
                                           self.sampled)}


class CombinedSources:
    """Several sources on one batch; their signal kinds must not overlap."""

    def __init__(self, *sources):
        self.sources = sources

    @property
    def produces(self) -> tuple[type, ...]:
        return tuple(kind for source in self.sources for kind in source.produces)

    @property
    def model(self) -> torch.nn.Module | None:
        return next((s.model for s in self.sources if getattr(s, "model", None) is not None), None)

    def request_hidden(self, layers) -> None:
        next(s for s in self.sources if hasattr(s, "request_hidden")).request_hidden(layers)

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        return {kind: signal for source in self.sources for kind, signal in source.signals(inputs, mask).items()}
