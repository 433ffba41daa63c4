"""Collator adding the teacher's own tokenisation and the span alignment to Axolotl batches.

Per example, once (in the DataLoader, not in ``compute_loss``):

1. render: the student's text is the bytes of the ids Axolotl made with the student's chat
   template (``tokens.token_bytes``), so the student's byte offsets are exact cumulative sums;
2. the teacher's text: the same text, or its own chat template's rendering (``templates``);
3. tokenise the teacher's text with the teacher's fast tokenizer, with offsets (no special tokens
   added: the template's text already holds them);
4. ``spans.aligned_pairs`` → student positions p and teacher positions q.

Batch keys added next to the wrapped collator's (``signals``): ``teacher_input_ids`` and
``teacher_attention_mask`` [B, T_t] (right-padded), ``aligned_student_positions`` and
``aligned_teacher_positions`` [B, A] (−1 = padding). Sample packing is refused at setup (a packed row
would need one teacher sequence per document).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from ..collators import DEFAULT_BASE_COLLATOR, base_collator_path, resolve_class
from ..signals import ALIGNED_STUDENT, ALIGNED_TEACHER, IGNORE_INDEX, TEACHER_ATTENTION_MASK, TEACHER_INPUT_IDS
from .spans import aligned_pairs, teacher_byte_ends
from .templates import TemplatePair
from .tokens import backend_json, token_bytes, token_lengths, tokenizer_name

LOG = logging.getLogger("axolotl.distill_plugin")


@lru_cache(maxsize=4)
def load_teacher_tokenizer(path: str, revision: str | None = None):
    """The teacher's tokenizer (fast; an error naming it when it has no offset mapping)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    backend_json(tokenizer)
    return tokenizer


def student_text(ids: np.ndarray, pieces_flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenated bytes of ``ids``, gathered with one vectorised index (no per-token join)."""
    sizes = lengths[ids]
    total = int(sizes.sum())
    offsets = np.repeat(starts[ids] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return pieces_flat[offsets + np.arange(total)].tobytes()


class ExampleAlignment:
    """One example's teacher ids and its aligned (p, q) positions."""

    __slots__ = ("teacher_ids", "student_pos", "teacher_pos")

    def __init__(self, teacher_ids, student_pos, teacher_pos):
        self.teacher_ids, self.student_pos, self.teacher_pos = teacher_ids, student_pos, teacher_pos


class Aligner:
    """Student ids + labels → ``ExampleAlignment`` (the vectorised core, also used by the benchmark)."""

    def __init__(self, student_tokenizer, teacher_tokenizer, max_teacher_tokens: int | None = None):
        self.student, self.teacher = student_tokenizer, teacher_tokenizer
        backend_json(student_tokenizer)  # both must be fast tokenizers: fail at setup, naming the one
        backend_json(teacher_tokenizer)
        pieces = token_bytes(student_tokenizer)
        self.lengths = token_lengths(student_tokenizer)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.flat = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.templates = TemplatePair(student_tokenizer, teacher_tokenizer)
        self.max_teacher_tokens = max_teacher_tokens
        self.unmatched = 0  # examples no template probe matched (CE only)

    def text(self, ids: np.ndarray) -> str:
        """The student's text: the bytes of its ids (a sequence truncated inside a character keeps
        its valid prefix)."""
        raw = student_text(ids, self.flat, self.starts, self.lengths)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return raw[: err.start].decode("utf-8")

    def __call__(self, input_ids, labels) -> ExampleAlignment:
        ids = np.asarray(input_ids, dtype=np.int64)
        found = self.templates.teacher_text(self.text(ids))
        if found is None:
            self.unmatched += 1
            if self.unmatched == 1:
                LOG.warning("distill_plugin: cross-tokenizer: an example matches no role sequence of the student's chat "
                            "template; it trains on CE only (further ones are counted, not logged)")
            found = ("", [])
        return self.align(ids, labels, *found)

    def align(self, ids: np.ndarray, labels, teacher_text: str, regions) -> ExampleAlignment:
        """Tokenise ``teacher_text`` with offsets and pair positions inside ``regions``."""
        encoded = self.teacher(teacher_text, add_special_tokens=False, return_offsets_mapping=True,
                               truncation=self.max_teacher_tokens is not None, max_length=self.max_teacher_tokens)
        if "offset_mapping" not in encoded:
            raise ValueError(f"tokenizer {tokenizer_name(self.teacher)!r} gave no offset mapping")
        teacher_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        supervised = np.asarray(labels) != IGNORE_INDEX
        ids = np.asarray(ids, dtype=np.int64)
        p, q = aligned_pairs(np.cumsum(self.lengths[ids]), teacher_byte_ends(offsets, teacher_text), supervised, regions)
        return ExampleAlignment(teacher_ids, p, q)


class CrossTokenizerCollator:
    """Wrap an Axolotl collator and attach the teacher's tokens and the alignment (see module docstring).

    Constructed like Axolotl's collators, ``CrossTokenizerCollator(tokenizer, **kwargs)``: ours are
    ``teacher_tokenizer`` (path or hub id), ``teacher_revision``, ``base_collator`` (class or dotted
    path); the rest go to the base collator.
    """

    def __init__(self, tokenizer, *args, teacher_tokenizer: str, teacher_revision: str | None = None,
                 base_collator=None, **kwargs):
        base_cls = resolve_class(base_collator or DEFAULT_BASE_COLLATOR)
        self.base = base_cls(tokenizer, *args, **kwargs)
        self.tokenizer = tokenizer
        self.teacher_tokenizer = load_teacher_tokenizer(teacher_tokenizer, teacher_revision)
        self.aligner = Aligner(tokenizer, self.teacher_tokenizer)
        pad = self.teacher_tokenizer.pad_token_id
        self.teacher_pad = pad if pad is not None else (self.teacher_tokenizer.eos_token_id or 0)

    def __call__(self, features, return_tensors=None):
        if isinstance(features[0], list):
            raise ValueError("cross-tokenizer distillation does not support sample packing (set `sample_packing: false`)")
        examples = [self.aligner(f["input_ids"], f["labels"]) for f in features]
        batch = self.base(features, return_tensors=return_tensors)
        B, T = batch["input_ids"].shape
        shift = [T - len(f["input_ids"]) if getattr(self.tokenizer, "padding_side", "right") == "left" else 0
                 for f in features]
        width = max(1, max(len(e.teacher_ids) for e in examples))
        pairs = max(1, max(len(e.student_pos) for e in examples))
        ids = torch.full((B, width), self.teacher_pad, dtype=torch.long)
        attention = torch.zeros((B, width), dtype=torch.long)
        student_pos = torch.full((B, pairs), -1, dtype=torch.long)
        teacher_pos = torch.full((B, pairs), -1, dtype=torch.long)
        for b, e in enumerate(examples):
            n, a = len(e.teacher_ids), len(e.student_pos)
            ids[b, :n] = torch.from_numpy(e.teacher_ids)
            attention[b, :n] = 1
            student_pos[b, :a] = torch.from_numpy(e.student_pos) + shift[b]
            teacher_pos[b, :a] = torch.from_numpy(e.teacher_pos)
        batch[TEACHER_INPUT_IDS], batch[TEACHER_ATTENTION_MASK] = ids, attention
        batch[ALIGNED_STUDENT], batch[ALIGNED_TEACHER] = student_pos, teacher_pos
        return batch


def cross_tokenizer_collator_cls_and_kwargs(cfg, teacher_tokenizer: str, teacher_revision: str | None = None,
                                            is_eval: bool = False):
    """For ``BasePlugin.get_collator_cls_and_kwargs``: ``(CrossTokenizerCollator, kwargs)``."""
    return CrossTokenizerCollator, {"teacher_tokenizer": teacher_tokenizer, "teacher_revision": teacher_revision,
                                    "base_collator": base_collator_path(cfg, is_eval)}
