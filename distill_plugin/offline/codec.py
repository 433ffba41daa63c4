"""Compact coding of a teacher's top-k distributions: ``ids [N, k]`` + ``logprobs [N, k]`` <-> bytes.

Scheme (format version 1), for one row of ``N`` positions with ``k`` candidates each:

* **Ids** are exact. Each position's ``k`` distinct ids are sorted ascending (the set carries the
  information; the pairing with log-probs is kept by storing the log-probs in the same order,
  which saves ``log2(k!)`` bits per position, ~37 bytes at k = 64). The sorted ids are
  gap-coded, ``g_j = s_j - s_{j-1}`` with ``s_{-1} = -1`` so ``g_j >= 1``, and each gap is split
  Elias-gamma style into a bucket ``b_j = floor(log2 g_j)`` and a mantissa ``g_j - 2**b_j`` of
  ``b_j`` bits. Buckets are entropy-coded (rANS, ``constriction``) with a categorical model per
  group of sorted slots (``SLOT_GROUPS`` groups: the first slots of a position have small gaps when
  the teacher favours frequent, low-id tokens); mantissas are coded uniformly (``b_j`` bits).
  Token ids therefore cost ~``H(bucket) + E[b]`` bits, which is far below ``ceil(log2 V)`` when
  the top-k sets concentrate on frequent tokens.
* **Log-probs** are quantised relative to the position's top-1: ``r_i = lp_max - lp_i >= 0``
  (log domain), ``levels = 2**bits``, code ``levels - 1`` marks ``-inf`` (a padded candidate),
  finite values use codes ``0 .. levels-2``:

  - ``scale="sqrt"`` (default): uniform in ``s_i = 1 - exp(-r_i / 2) = 1 - sqrt(p_i / p_max)``,
    ``c_i = round(s_i * (levels - 2))``. The step in ``r`` grows as ``p_i`` shrinks, matching the
    KL's weighting of each entry's error by its probability: half the bytes of ``"log"`` at the
    same measured KL. Error bound: ``|sqrt(q_i/q_max) - sqrt(p_i/p_max)| <= 1 / (2 (levels-2))``
    (except the last level, decoded finite at ``s = 1 - 0.5/(levels-2)``).
  - ``scale="log"``: uniform in ``r``: ``c_i = round(r_i / step)``, ``step = r_max / (levels-2)``.

  Codes are entropy-coded with one categorical model. ``lp_max`` itself is stored as float16
  (2 bytes/position).
* **Models**: the categorical tables are fitted once per store part (``fit_tables`` over all rows
  of the part, stored in its metadata), so a row blob carries no header.

Ragged layout (``ragged=True``, store format version 2, adaptive top-k): a position keeps only its
finite entries, ``c_n = #{i : lp_ni > -inf}`` with ``1 <= c_n <= k``. The blob codes the counts
first (one categorical model over ``0 .. k``, ``CodecTables.count_counts``), then the
``M = sum_n c_n`` kept entries exactly as above with slot group ``(j * SLOT_GROUPS) // c_n`` for the
j-th sorted id of position n (for ``c_n = k`` this is the fixed layout's grouping); no ``-inf``
code is spent. ``decode`` pads every position back to ``k`` columns: ids 0, log-probs ``-inf``.
``adaptive_truncate`` chooses the entries: the fewest top candidates whose probability sum reaches
``1 - epsilon``, at most ``k``, at least 1.

KL. Ids are exact and ``-inf`` stays ``-inf``. Write the decoded top-k, renormalised as the loss
uses it (``p_i ∝ exp(lp_i)`` over the k entries), as ``q_i ∝ p_i exp(d_i)``. In general
``KL(p || q) = log E_p[exp(d)] - E_p[d] <= sum_i p_i (exp(a_i) - 1 - a_i)`` with ``|d_i - d_0| <= a_i``,
so errors count in proportion to each entry's probability (the ``"sqrt"`` design). With
``scale="log"``, ``|d_i - d_0| <= step/2`` for every entry with ``r_i <= r_max``, and Hoeffding's lemma
gives the strict bound ``KL <= step**2 / 8`` nats/position (7.7e-4 at bits = 8, r_max = 20); entries
beyond ``r_max`` (relative probability < e**-20) are clamped. ``benchmarks/bench_topk_codec.py``
measures both scales. Absolute log-probs (needed for the tail
bucket ``1 - sum_i p_i``) also carry the float16 error of ``lp_max``: ``<= 2**-11 * |lp_max|``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

SLOT_GROUPS = 4
N_BUCKETS = 25  # gaps < 2**25 (vocabularies up to 33M ids)
_UNIFORM_MAX_BITS = 23  # constriction's Uniform model takes sizes < 2**24


@dataclass(frozen=True)
class CodecConfig:
    """Quantisation parameters: ``bits`` per log-prob code (alphabet size) over ``[0, r_max]`` nats."""

    bits: int = 8
    r_max: float = 20.0
    scale: str = "sqrt"  # "sqrt": uniform in sqrt(p_i / p_max); "log": uniform in r_i (strict KL bound)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        return self.r_max / (self.levels - 2)

    @property
    def kl_bound(self) -> float:
        """``scale="log"``: worst-case KL (nats/position) between exact and decoded renormalised top-k."""
        return self.step**2 / 8 if self.scale == "log" else float("nan")

    def quantise(self, rel: np.ndarray) -> np.ndarray:
        """Codes ``0 .. levels-2`` of relative log-probs ``rel = lp_max - lp >= 0``."""
        if self.scale == "log":
            x = rel / self.step
        else:
            x = -np.expm1(-rel / 2) * (self.levels - 2)
        return np.clip(np.rint(x), 0, self.levels - 2).astype(np.int64)

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        if self.scale == "log":
            return codes.astype(np.float32) * np.float32(self.step)
        s = np.minimum(codes / (self.levels - 2), 1 - 0.5 / (self.levels - 2))  # keep the last level finite
        return (-2 * np.log1p(-s)).astype(np.float32)


@dataclass
class CodecTables:
    """Symbol counts of one store part: id-gap buckets per slot group, and log-prob codes."""

    bucket_counts: list[list[int]] = field(default_factory=list)  # [SLOT_GROUPS][N_BUCKETS]
    code_counts: list[int] = field(default_factory=list)  # [levels]
    count_counts: list[int] = field(default_factory=list)  # [k + 1] entries per position (ragged only)

    def to_json(self) -> str:
        data = asdict(self)
        if not data["count_counts"]:  # fixed-k tables keep the format version 1 layout
            del data["count_counts"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "CodecTables":
        return cls(**json.loads(text))


def _slot_groups(k: int) -> np.ndarray:
    return (np.arange(k) * SLOT_GROUPS) // k


def adaptive_truncate(ids: np.ndarray, logprobs: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep each position's fewest top candidates whose probability sum reaches ``1 - epsilon``.

    ``ids``/``logprobs`` are ``[N, k]`` absolute (full-vocabulary) log-probs. Position n keeps
    ``c_n = min(k, f_n, 1 + #{j : sum_{i<=j} p_(i) < 1 - epsilon})`` entries (``p_(i)`` sorted
    decreasing, ``f_n`` its finite entries, ``c_n >= 1``), so its kept mass is ``>= 1 - epsilon``
    unless ``c_n = k``. Returns ``[N, k]`` arrays sorted by decreasing log-prob with the dropped
    slots set to id 0 and log-prob ``-inf``.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    ids = np.asarray(ids, dtype=np.int64)
    logprobs = np.asarray(logprobs, dtype=np.float32)
    order = np.argsort(-logprobs, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    lps = np.take_along_axis(logprobs, order, axis=1)
    mass = np.cumsum(np.exp(lps.astype(np.float64)), axis=1)
    count = 1 + (mass < 1.0 - epsilon).sum(axis=1)
    count = np.clip(np.minimum(count, np.isfinite(lps).sum(axis=1)), 1, lps.shape[1])
    drop = np.arange(lps.shape[1])[None, :] >= count[:, None]
    return np.where(drop, 0, ids), np.where(drop, -np.inf, lps).astype(np.float32)


def _ragged(ids: np.ndarray, logprobs: np.ndarray):
    """Counts ``c [N]`` of finite entries and the kept entries ``[M]`` row-major, in slot order."""
    ids = np.asarray(ids, dtype=np.int64)
    logprobs = np.asarray(logprobs, dtype=np.float32)
    if ids.ndim != 2 or ids.shape != logprobs.shape:
        raise ValueError(f"ids {ids.shape} and logprobs {logprobs.shape} must both be [N, k]")
    if np.isnan(logprobs).any() or (logprobs == np.inf).any():
        raise ValueError("log-probs must be finite or -inf")
    finite = np.isfinite(logprobs)
    counts = finite.sum(axis=1)
    if not (counts >= 1).all():
        raise ValueError("every position needs at least one finite log-prob")
    return counts, ids[finite], logprobs[finite]


def _ragged_groups(counts: np.ndarray) -> np.ndarray:
    """Slot group ``(j * SLOT_GROUPS) // c_n`` of every kept entry, row-major."""
    starts = np.cumsum(counts) - counts
    rows = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(int(counts.sum())) - starts[rows]
    return (j * SLOT_GROUPS) // counts[rows]


def _split_ragged(ids: np.ndarray, logprobs: np.ndarray, cfg: CodecConfig):
    """Ragged ``_split``: (counts [N], buckets [M], mantissas [M], codes [M], lp_max16 [N], groups [M])."""
    counts, flat_ids, flat_lps = _ragged(ids, logprobs)
    n = len(counts)
    rows = np.repeat(np.arange(n), counts)
    order = np.lexsort((flat_ids, rows))  # by row, then by id
    flat_ids, flat_lps = flat_ids[order], flat_lps[order]
    starts = np.cumsum(counts) - counts
    prev = np.empty_like(flat_ids)
    prev[1:] = flat_ids[:-1]
    prev[starts] = -1
    if flat_ids.size and flat_ids.min() < 0:
        raise ValueError("token ids must be non-negative")
    buckets, mantissas = _gap_symbols(flat_ids - prev)
    lp_max = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(lp_max, rows, flat_lps)
    lp_max16 = lp_max.astype(np.float16)
    rel = lp_max16.astype(np.float32)[rows] - flat_lps
    codes = cfg.quantise(np.maximum(rel, 0.0))
    return counts, buckets, mantissas, codes, lp_max16, _ragged_groups(counts)


def _gap_symbols(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elias-gamma split of id gaps ``g >= 1``: bucket ``floor(log2 g)`` and mantissa ``g - 2**bucket``."""
    if gaps.size and gaps.min() < 1:
        raise ValueError("each position's top-k ids must be distinct")
    buckets = np.floor(np.log2(gaps)).astype(np.int64)
    # exact integer floor(log2): fix float rounding at powers of two
    buckets += (np.left_shift(1, buckets + 1) <= gaps).astype(np.int64)
    buckets -= (np.left_shift(1, buckets) > gaps).astype(np.int64)
    if buckets.size and buckets.max() >= min(N_BUCKETS, _UNIFORM_MAX_BITS + 1):
        raise ValueError("token id too large for this codec")
    return buckets, gaps - np.left_shift(1, buckets)


def _split(ids: np.ndarray, logprobs: np.ndarray, cfg: CodecConfig):
    """Sort each position by id; return (buckets, mantissas, codes, lp_max) as integer arrays."""
    ids = np.asarray(ids, dtype=np.int64)
    logprobs = np.asarray(logprobs, dtype=np.float32)
    if ids.ndim != 2 or ids.shape != logprobs.shape:
        raise ValueError(f"ids {ids.shape} and logprobs {logprobs.shape} must both be [N, k]")
    if ids.size and ids.min() < 0:
        raise ValueError("token ids must be non-negative")
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    lp = np.take_along_axis(logprobs, order, axis=1)
    buckets, mantissas = _gap_symbols(np.diff(sorted_ids, axis=1, prepend=-1))
    finite = np.isfinite(lp)
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError("log-probs must be finite or -inf")
    if not finite.any(axis=1).all():
        raise ValueError("every position needs at least one finite log-prob")
    lp_max = np.where(finite, lp, -np.inf).max(axis=1)
    lp_max16 = lp_max.astype(np.float16)
    rel = lp_max16.astype(np.float32)[:, None] - np.where(finite, lp, 0.0)
    codes = cfg.quantise(np.maximum(rel, 0.0))
    codes[~finite] = cfg.levels - 1
    return buckets, mantissas, codes, lp_max16


def fit_tables(rows, cfg: CodecConfig, ragged: bool = False) -> CodecTables:
    """Count symbols over ``rows`` (iterable of ``(ids [N,k], logprobs [N,k])``) for the models."""
    bucket_counts = np.zeros((SLOT_GROUPS, N_BUCKETS), dtype=np.int64)
    code_counts = np.zeros(cfg.levels, dtype=np.int64)
    count_counts = np.zeros(0, dtype=np.int64)
    for ids, logprobs in rows:
        if ragged:
            counts, buckets, _, codes, _, groups = _split_ragged(ids, logprobs, cfg)
            np.add.at(bucket_counts, (groups, buckets), 1)
            code_counts += np.bincount(codes, minlength=cfg.levels)
            hist = np.bincount(counts, minlength=np.shape(ids)[1] + 1)
            count_counts = np.pad(count_counts, (0, max(0, len(hist) - len(count_counts))))
            count_counts[: len(hist)] += hist
            continue
        buckets, _, codes, _ = _split(ids, logprobs, cfg)
        groups = np.broadcast_to(_slot_groups(buckets.shape[1]), buckets.shape)
        np.add.at(bucket_counts, (groups.ravel(), buckets.ravel()), 1)
        code_counts += np.bincount(codes.ravel(), minlength=cfg.levels)
    return CodecTables(bucket_counts.tolist(), code_counts.tolist(), count_counts.tolist())


def _model(counts):
    import constriction

    probs = np.asarray(counts, dtype=np.float64) + 0.5  # every symbol stays encodable
    return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)


def _encode_entries(coder, buckets, mantissas, codes, groups, tables: CodecTables) -> None:
    """Push (in reverse of the decoding order) the slot-grouped buckets, mantissas and codes."""
    import constriction

    coder.encode_reverse(codes.astype(np.int32), _model(tables.code_counts))
    big = buckets > 0
    if big.any():
        sizes = np.left_shift(1, buckets[big]).astype(np.int32)
        coder.encode_reverse(mantissas[big].astype(np.int32), constriction.stream.model.Uniform(), sizes)
    for g in reversed(range(SLOT_GROUPS)):
        sel = buckets[groups == g]
        if sel.size:
            coder.encode_reverse(sel.astype(np.int32), _model(tables.bucket_counts[g]))


def _decode_entries(coder, groups: np.ndarray, tables: CodecTables) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``_encode_entries`` for entries with slot ``groups``: (gaps, codes)."""
    import constriction

    buckets = np.zeros(len(groups), dtype=np.int64)
    for g in range(SLOT_GROUPS):
        sel = groups == g
        if sel.any():
            buckets[sel] = coder.decode(_model(tables.bucket_counts[g]), int(sel.sum()))
    mantissas = np.zeros(len(groups), dtype=np.int64)
    big = buckets > 0
    if big.any():
        sizes = np.left_shift(1, buckets[big]).astype(np.int32)
        mantissas[big] = coder.decode(constriction.stream.model.Uniform(), sizes)
    codes = coder.decode(_model(tables.code_counts), len(groups)).astype(np.int64)
    return np.left_shift(1, buckets) + mantissas, codes


def encode(ids: np.ndarray, logprobs: np.ndarray, tables: CodecTables, cfg: CodecConfig,
           ragged: bool = False) -> bytes:
    """Encode one row's ``[N, k]`` top-k ids and log-probs (any candidate order) into bytes.

    ``ragged``: the ragged layout (the finite entries of each position only, after their count)."""
    import constriction

    if ragged:
        counts, buckets, mantissas, codes, lp_max16, groups = _split_ragged(ids, logprobs, cfg)
        coder = constriction.stream.stack.AnsCoder()
        _encode_entries(coder, buckets, mantissas, codes, groups, tables)
        coder.encode_reverse(counts.astype(np.int32), _model(tables.count_counts))
        return lp_max16.astype("<f2").tobytes() + coder.get_compressed().astype("<u4").tobytes()
    buckets, mantissas, codes, lp_max16 = _split(ids, logprobs, cfg)
    groups = np.broadcast_to(_slot_groups(buckets.shape[1]), buckets.shape).ravel()
    coder = constriction.stream.stack.AnsCoder()
    _encode_entries(coder, buckets.ravel(), mantissas.ravel(), codes.ravel(), groups, tables)
    words = coder.get_compressed().astype("<u4")
    return lp_max16.astype("<f2").tobytes() + words.tobytes()


def decode(blob: bytes, n: int, k: int, tables: CodecTables, cfg: CodecConfig,
           ragged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``n`` positions; return ``ids`` int64 ``[n, k]`` and ``logprobs`` float32 ``[n, k]``.

    Each position's candidates come out sorted by decreasing log-prob (ties by id; ``-inf`` last).
    ``ragged``: the blob holds the ragged layout; a position's slots past its count are id 0, ``-inf``.
    """
    import constriction

    lp_max = np.frombuffer(blob, dtype="<f2", count=n).astype(np.float32)
    words = np.frombuffer(blob, dtype="<u4", offset=2 * n).astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    if ragged:
        counts = coder.decode(_model(tables.count_counts), n).astype(np.int64)
        gaps, codes = _decode_entries(coder, _ragged_groups(counts), tables)
        rows, slot, flat_ids = ragged_ids(counts, gaps)
        ids = np.zeros((n, k), dtype=np.int64)
        logprobs = np.full((n, k), -np.inf, dtype=np.float32)
        ids[rows, slot] = flat_ids
        logprobs[rows, slot] = lp_max[rows] - cfg.dequantise(codes)
        order = _desc_order(ids, logprobs)
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(logprobs, order, axis=1)
    gaps, codes = _decode_entries(coder, np.broadcast_to(_slot_groups(k), (n, k)).ravel(), tables)
    gaps, codes = gaps.reshape(n, k), codes.reshape(n, k)
    ids = np.cumsum(gaps, axis=1) - 1
    logprobs = lp_max[:, None] - cfg.dequantise(codes)
    logprobs[codes == cfg.levels - 1] = -np.inf
    order = _desc_order(ids, logprobs)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(logprobs, order, axis=1)


def ragged_ids(counts: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, slot and id of every entry of a ragged layout from its per-position ``counts`` and id gaps."""
    starts = np.cumsum(counts) - counts
    rows = np.repeat(np.arange(len(counts)), counts)
    csum = np.cumsum(gaps)
    flat_ids = csum - (csum[starts] - gaps[starts])[rows] - 1 if len(gaps) else np.zeros(0, np.int64)
    return rows, np.arange(len(gaps)) - starts[rows], flat_ids


def _desc_order(ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    # ids are ascending per row already, so a stable sort on -logprobs breaks ties by id.
    return np.argsort(-logprobs, axis=1, kind="stable")


def topk_kl(exact: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per-position KL(p || q) in nats between two renormalised top-k distributions.

    ``exact`` and ``decoded`` are log-probs ``[N, k]`` over the same candidate ids in the same
    order; ``-inf`` entries carry zero mass. This is the distribution the ``renormalize`` tail mode
    trains on.
    """
    def norm(lp):
        lp = np.asarray(lp, dtype=np.float64)
        m = lp.max(axis=1, keepdims=True)
        return lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))

    lp, lq = norm(exact), norm(decoded)
    p = np.exp(lp)
    terms = np.where(p > 0, p * (lp - np.where(np.isfinite(lq), lq, -1e30)), 0.0)
    return terms.sum(axis=1)
