"""Collator adding stored teacher top-k targets to Axolotl batches (padded or sample-packed).

Batch contract read by the sparse KD loss, added next to the wrapped collator's keys:

* ``teacher_topk_ids``: LongTensor ``[B, T, k]``
* ``teacher_topk_logprobs``: FloatTensor ``[B, T, k]``, fp32 natural-log probabilities at the
  capture temperature (``store.meta.capture_temperature``), not renormalised, candidates sorted by
  decreasing log-prob (a sampled store: the estimate ``log p̂`` of ``offline.sampled``, k = its
  sample count).

``T`` is the padded length of ``input_ids``. Entry ``[b, t]`` is the teacher's distribution at
position t, which predicts token t+1; it is present exactly where ``labels[b, t+1] != -100``
within the same example, elsewhere ids are 0 and log-probs ``-inf``. With sample packing the
examples' targets are concatenated in the order of the examples, so the last position of each
packed example has no target (the next token belongs to another document): the loss should mask
KD by ``isfinite(teacher_topk_logprobs[..., 0])``.

Rows are found by ``row_key(input_ids)``, so order, shuffling and packing do not matter; a row
whose captured positions disagree with its labels raises instead of training on shifted targets.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from distill_plugin.collators import DEFAULT_BASE_COLLATOR, base_collator_path, cfg_get, resolve_class
from distill_plugin.offline.store import StoredRow, TopKStore, positions_mask, row_key
from distill_plugin.signals import TOPK_IDS, TOPK_LOGPROBS

__all__ = ["OfflineTopKCollator", "base_collator_path", "dense_targets", "offline_collator_cls_and_kwargs", "resolve_class"]


@lru_cache(maxsize=4)
def _open_store(path: str, pid: int) -> TopKStore:  # pid: one reader per DataLoader worker process
    return TopKStore(path)


def dense_targets(row: StoredRow, labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[len(labels), k]`` ids (0) and log-probs (-inf) with the stored rows at their positions."""
    mask = positions_mask(labels)
    if len(mask) != len(row.mask) or not np.array_equal(mask, row.mask):
        raise ValueError(
            "captured positions differ from this example's labels[t+1] != -100 positions: the store was "
            "captured with other labels (train_on_inputs / roles_to_train / template changed?)"
        )
    ids = np.zeros((len(mask), k), dtype=np.int64)
    lps = np.full((len(mask), k), -np.inf, dtype=np.float32)
    ids[mask] = row.ids[:, :k]
    lps[mask] = row.logprobs[:, :k]
    return ids, lps


class OfflineTopKCollator:
    """Wrap an Axolotl collator and attach ``teacher_topk_ids`` / ``teacher_topk_logprobs``.

    Constructed the way Axolotl constructs collators, ``OfflineTopKCollator(tokenizer, **kwargs)``;
    ``store_path`` (the ``teacher_logits`` directory), ``base_collator`` (class or dotted path;
    default: Axolotl's ``DataCollatorForSeq2Seq``) and ``k`` (default: the store's k) are ours, the
    remaining kwargs (padding, pad_to_multiple_of, return_tensors, ...) go to the base collator.
    """

    def __init__(self, tokenizer, *args, store_path: str, base_collator=None, k: int | None = None, **kwargs):
        base_cls = resolve_class(base_collator or DEFAULT_BASE_COLLATOR)
        self.base = base_cls(tokenizer, *args, **kwargs)
        self.tokenizer = tokenizer
        self.store_path = str(store_path)
        self.packing = "BatchSampler" in base_cls.__name__
        self.k = k or self.store.meta.k
        if self.k > self.store.meta.k:
            raise ValueError(f"k={self.k} but the store holds top-{self.store.meta.k}")

    @property
    def store(self) -> TopKStore:
        return _open_store(self.store_path, os.getpid())

    @property
    def capture_temperature(self) -> float:
        return self.store.meta.capture_temperature

    def _example_targets(self, feature) -> tuple[np.ndarray, np.ndarray]:
        row = self.store.get(row_key(feature["input_ids"]))
        return dense_targets(row, feature["labels"], self.k)

    def __call__(self, features, return_tensors=None):
        import torch

        packs = features if isinstance(features[0], list) else (
            [features] if self.packing else [[f] for f in features])
        per_row = []
        for pack in packs:
            parts = [self._example_targets(f) for f in pack]
            per_row.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
        batch = self.base(features, return_tensors=return_tensors)
        B, T = batch["input_ids"].shape
        if B != len(per_row):
            raise ValueError(f"base collator made {B} rows from {len(per_row)} packs")
        ids = torch.zeros(B, T, self.k, dtype=torch.long)
        lps = torch.full((B, T, self.k), -torch.inf, dtype=torch.float32)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for b, (row_ids, row_lps) in enumerate(per_row):
            n = len(row_ids)
            span = slice(T - n, T) if left else slice(0, n)
            ids[b, span] = torch.from_numpy(row_ids)
            lps[b, span] = torch.from_numpy(row_lps)
        batch[TOPK_IDS], batch[TOPK_LOGPROBS] = ids, lps
        return batch


def offline_collator_cls_and_kwargs(cfg, is_eval: bool = False, store_path: str | None = None,
                                    k: int | None = None):
    """For ``BasePlugin.get_collator_cls_and_kwargs``: ``(OfflineTopKCollator, kwargs)`` or ``None``.

    Returns plain ``None`` (never ``(None, None)``, which would replace Axolotl's default collator)
    when no ``teacher_logits`` store is configured. ``store_path`` defaults to
    ``cfg.distill.teacher_logits``.
    """
    store_path = store_path or cfg_get(cfg_get(cfg, "distill"), "teacher_logits")
    if not store_path:
        return None
    return OfflineTopKCollator, {"store_path": str(store_path), "base_collator": base_collator_path(cfg, is_eval),
                                 "k": k}
