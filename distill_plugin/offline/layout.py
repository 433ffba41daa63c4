"""What a store part holds for each format version, between the captured arrays and the blobs.

``stored_form`` reduces one example's captured arrays to what its format keeps, ``encode_part`` fits
one part's codec tables and encodes its rows, ``decode_row`` reads a row back as ``[n_positions, k]``
ids and log-probs for the collator (a sampled store: the estimate ``log p̂``, ``offline.sampled``).
``meta`` is the store's ``store.StoreMeta``.
"""

from __future__ import annotations

import numpy as np

from distill_plugin.offline.codec import CodecTables, adaptive_truncate, decode, encode, fit_tables
from distill_plugin.offline.sampled import decode_sampled, encode_sampled, estimate_logprobs, fit_sampled_tables, tally


def stored_form(meta, ids, values) -> tuple:
    """What the store keeps of one example's captured arrays: the top ``k`` ids and log-probs
    (``adaptive_truncate`` of them with ``meta.epsilon``), or for a sampled store
    ``sampled.tally(draws, log_weights)`` (the weights dropped when ``q = p``)."""
    if meta.sampled:
        return tally(ids, values if meta.weighted else None)
    ids, values = np.asarray(ids)[:, : meta.k], np.asarray(values)[:, : meta.k]
    if meta.epsilon is not None and len(ids):
        ids, values = adaptive_truncate(ids, values, meta.epsilon)
    return ids, values


def encode_part(meta, rows: list[tuple]) -> tuple[CodecTables, list[bytes]]:
    """The codec tables fitted on one part's ``stored_form`` rows and each row's blob (empty rows: b"")."""
    full = [r for r in rows if len(r[0])]
    if meta.sampled:
        tables = fit_sampled_tables(full, meta.samples)
        return tables, [encode_sampled(*r, tables, meta.samples, meta.weighted) if len(r[0]) else b"" for r in rows]
    cfg = meta.codec_config
    tables = fit_tables(full, cfg, meta.ragged)
    return tables, [encode(*r, tables, cfg, meta.ragged) if len(r[0]) else b"" for r in rows]


def decode_row(meta, blob: bytes, n_positions: int, tables: CodecTables) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` int64 and log-probs float32 ``[n_positions, k]``, sorted by decreasing log-prob (ties by
    id, empty slots last as id 0, ``-inf``); a sampled store gives ``log p̂ = log(c / samples) + log w``."""
    k = meta.k
    if not n_positions:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    if not meta.sampled:
        return decode(blob, n_positions, k, tables, meta.codec_config, meta.ragged)
    ids, counts, log_w = decode_sampled(blob, n_positions, k, tables, meta.weighted)
    lps = estimate_logprobs(counts, log_w, k)
    order = np.argsort(-lps, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(lps, order, 1)
