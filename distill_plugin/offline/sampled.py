"""Sampled (unbiased) offline store: each position keeps ``S`` token ids drawn from a proposal.

Random Sampling KD (Anshumann et al., ACL 2025, "Sparse Logit Sampling"). At a captured position t
(predicting token t+1) the teacher's distribution at the capture temperature is
``p = softmax(z_t / T_capture)``; the proposal is ``q ∝ p^(1/τ)`` (``τ`` = ``proposal_temperature``;
``τ = 1``: ``q = p``). Capture draws ``S`` ids with replacement from ``q`` and stores each distinct
id i with its count ``c_i`` (``Σ c_i = S``) and, when ``q ≠ p``, its log importance weight
``log w_i = log p_i − log q_i``. The training target is

    p̂_i = (c_i / S) · w_i        (w_i = 1 when q = p)

an unbiased estimate of p: ``E[c_i] = S q_i``, so ``E[p̂_i] = p_i`` for every id of the vocabulary
(0 for ids never drawn). The forward-KL gradient is linear in the target, so training on p̂ gives the
full-distribution gradient in expectation (``losses.sampled``). With ``q = p``, ``Σ p̂ = 1`` exactly.

Draws are reproducible: position n of a row uses the uniforms ``uniforms(seed, row_key)[n]``
(``numpy`` ``default_rng([seed, int(row_key, 16)])``), mapped through q's inverse CDF, so a row's
draws depend on the seed and its tokens only, not on the batch or the order of capture (a resumed
capture writes the same store).

Blob layout (store format version 3, rANS as the top-k codec): the distinct-id count ``d_n`` of every
position (a categorical over ``0 .. S``, ``CodecTables.count_counts``), then the ``M = Σ d_n`` entries:
ids sorted ascending per position and gap-coded exactly as the top-k codec's ragged layout (slot
group ``(j · SLOT_GROUPS) // d_n``), each entry's count ``c_i − 1`` (a categorical over ``0 .. S−1``,
``CodecTables.code_counts``), and, for a weighted store (``τ ≠ 1``), each entry's ``log w_i`` as a
float16 (16 uniform bits). The float16 rounding of ``log w`` is the only inexact value: it scales
``w_i`` by at most ``exp(2^-11 · |log w_i|)`` (< 0.1 % for ``|log w| < 2``).
"""

from __future__ import annotations

import numpy as np

from distill_plugin.offline.codec import (
    N_BUCKETS, SLOT_GROUPS, CodecTables, _decode_entries, _encode_entries, _gap_symbols, _model, _ragged_groups,
    ragged_ids,
)

WEIGHT_BITS = 16  # float16 log w


def uniforms(seed: int, row_key: str, positions: int, samples: int) -> np.ndarray:
    """``[positions, samples]`` uniforms in [0, 1) of one row: its draws' randomness (module docstring)."""
    return np.random.default_rng([int(seed), int(row_key, 16)]).random((positions, samples))


def tally(draws: np.ndarray, log_weights: np.ndarray | None = None):
    """Distinct ids of each position's draws with their counts.

    ``draws`` ``[n, S]`` ids; ``log_weights`` ``[n, S]`` the ``log w`` of each draw (None: unweighted).
    Returns ``ids``, ``counts`` (int64) and ``log_w`` (float32, 0 when unweighted), each ``[n, S]``:
    position n's ``d_n`` distinct ids ascending in its first ``d_n`` slots, the other slots id 0, count 0.
    """
    draws = np.asarray(draws, dtype=np.int64)
    n, s = draws.shape
    order = np.argsort(draws, axis=1, kind="stable")
    d = np.take_along_axis(draws, order, 1)
    lw = np.zeros((n, s), np.float32) if log_weights is None else \
        np.take_along_axis(np.asarray(log_weights, dtype=np.float32), order, 1)
    first = np.ones_like(d, dtype=bool)
    first[:, 1:] = d[:, 1:] != d[:, :-1]
    starts = np.flatnonzero(first.ravel())
    runs = np.diff(np.append(starts, d.size))  # a row's first column always starts a run
    rows, slot = starts // s, (np.cumsum(first, axis=1) - 1).ravel()[starts]
    ids, counts, log_w = np.zeros((n, s), np.int64), np.zeros((n, s), np.int64), np.zeros((n, s), np.float32)
    ids[rows, slot], counts[rows, slot], log_w[rows, slot] = d.ravel()[starts], runs, lw.ravel()[starts]
    return ids, counts, log_w


def estimate_logprobs(counts: np.ndarray, log_w: np.ndarray, samples: int) -> np.ndarray:
    """``log p̂ = log(c / S) + log w`` (float32), ``-inf`` where ``c = 0`` (an empty slot)."""
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, np.log(counts / samples) + log_w, -np.inf).astype(np.float32)


def _entries(ids: np.ndarray, counts: np.ndarray, log_w: np.ndarray):
    """Distinct counts ``d [n]`` and the kept entries row-major, ids ascending within a position."""
    ids, counts = np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    if ids.ndim != 2 or ids.shape != counts.shape:
        raise ValueError(f"ids {ids.shape} and counts {counts.shape} must both be [n, samples]")
    kept = counts > 0
    d = kept.sum(axis=1)
    if not (d >= 1).all():
        raise ValueError("every position needs at least one drawn id")
    rows = np.repeat(np.arange(len(d)), d)
    flat_ids, flat_c, flat_w = ids[kept], counts[kept], np.asarray(log_w, dtype=np.float32)[kept]
    order = np.lexsort((flat_ids, rows))
    return d, flat_ids[order], flat_c[order], flat_w[order]


def _symbols(ids, counts, log_w, samples: int):
    d, flat_ids, flat_c, flat_w = _entries(ids, counts, log_w)
    if flat_ids.size and flat_ids.min() < 0:
        raise ValueError("token ids must be non-negative")
    if (flat_c > samples).any() or (d.size and (counts.sum(axis=1) != samples).any()):
        raise ValueError(f"every position's counts must sum to the sample count {samples}")
    starts = np.cumsum(d) - d
    prev = np.empty_like(flat_ids)
    prev[1:] = flat_ids[:-1]
    prev[starts] = -1
    buckets, mantissas = _gap_symbols(flat_ids - prev)
    return d, buckets, mantissas, flat_c - 1, flat_w, _ragged_groups(d)


def fit_sampled_tables(rows, samples: int) -> CodecTables:
    """Symbol counts over ``rows`` (iterable of ``(ids, counts, log_w)``, ``tally``'s output)."""
    bucket_counts = np.zeros((SLOT_GROUPS, N_BUCKETS), dtype=np.int64)
    code_counts = np.zeros(samples, dtype=np.int64)
    count_counts = np.zeros(samples + 1, dtype=np.int64)
    for ids, counts, log_w in rows:
        d, buckets, _, codes, _, groups = _symbols(ids, counts, log_w, samples)
        np.add.at(bucket_counts, (groups, buckets), 1)
        code_counts += np.bincount(codes, minlength=samples)
        count_counts += np.bincount(d, minlength=samples + 1)
    return CodecTables(bucket_counts.tolist(), code_counts.tolist(), count_counts.tolist())


def encode_sampled(ids, counts, log_w, tables: CodecTables, samples: int, weighted: bool) -> bytes:
    """One row's ``tally`` output as bytes (module docstring); ``weighted``: also each entry's ``log w``."""
    import constriction

    d, buckets, mantissas, codes, flat_w, groups = _symbols(ids, counts, log_w, samples)
    coder = constriction.stream.stack.AnsCoder()
    if weighted and len(flat_w):
        bits = flat_w.astype("<f2").view("<u2").astype(np.int32)
        coder.encode_reverse(bits, constriction.stream.model.Uniform(), np.full(len(bits), 1 << WEIGHT_BITS, np.int32))
    _encode_entries(coder, buckets, mantissas, codes, groups, tables)
    coder.encode_reverse(d.astype(np.int32), _model(tables.count_counts))
    return coder.get_compressed().astype("<u4").tobytes()


def decode_sampled(blob: bytes, n: int, samples: int, tables: CodecTables, weighted: bool):
    """Inverse of ``encode_sampled``: ``ids``, ``counts`` and ``log_w``, each ``[n, samples]`` as ``tally``'s."""
    import constriction

    coder = constriction.stream.stack.AnsCoder(np.frombuffer(blob, dtype="<u4").astype(np.uint32))
    d = coder.decode(_model(tables.count_counts), n).astype(np.int64)
    gaps, codes = _decode_entries(coder, _ragged_groups(d), tables)
    rows, slot, flat_ids = ragged_ids(d, gaps)
    ids, counts, log_w = np.zeros((n, samples), np.int64), np.zeros((n, samples), np.int64), \
        np.zeros((n, samples), np.float32)
    ids[rows, slot], counts[rows, slot] = flat_ids, codes + 1
    if weighted and len(gaps):
        sizes = np.full(len(gaps), 1 << WEIGHT_BITS, np.int32)
        bits = coder.decode(constriction.stream.model.Uniform(), sizes).astype("<u2")
        log_w[rows, slot] = bits.view("<f2").astype(np.float32)
    return ids, counts, log_w
