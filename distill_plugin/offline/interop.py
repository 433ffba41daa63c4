"""Import datasets in Axolotl KD's logprob format (``axolotl.integrations.kd.chat_template``).

Axolotl KD rows (v2, ``type: axolotl.integrations.kd.chat_template``) hold the conversation
(``field_messages``, e.g. ``messages``), ``target_token_ids`` ``[L][k]`` and the log-probs under
``logprobs_field`` (default ``logprobs``) ``[L][k]``; the legacy loader (``...chat_template.load_legacy``)
has only the log-prob field, each position a list of ``{"token": "token_id:<id>", "logprob": x}``.
The dataset entry's ``temperature`` is the temperature the log-probs were produced at.

Alignment (Axolotl pads the list on the left to the ``N`` training tokens): entry ``j`` describes
token ``p = N - L + j``, i.e. it is vLLM's prompt log-prob of token p, the teacher distribution at
position ``p - 1``. In our convention (entry t predicts token t+1) it lands at ``t = N - L + j - 1``.
With ``alignment="position"`` entry j is taken as the distribution *at* position ``N - L + j``
instead (for datasets produced with our shift convention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from distill_plugin.offline.capture import CaptureStats, Example, make_meta, tokenize_row
from distill_plugin.offline.store import StoreWriter, stored_keys, row_key


def _position_entries(row: dict, logprobs_field: str) -> tuple[list, list]:
    """Per-position (ids, logprobs) lists from a v2 or legacy row (``None`` entries kept)."""
    logprobs = row[logprobs_field]
    if "target_token_ids" in row:
        return list(row["target_token_ids"]), list(logprobs)
    ids, values = [], []
    for entry in logprobs:
        if entry is None:
            ids.append(None)
            values.append(None)
            continue
        ids.append([int(str(c["token"]).split(":")[1]) for c in entry])
        values.append([float(c["logprob"]) for c in entry])
    return ids, values


def _fill(ids: list[int], values: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one position's candidates; missing slots get unused ids and ``-inf``."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:k]
    out_ids = [int(ids[i]) for i in order]
    out_lps = [float(values[i]) for i in order]
    if len(set(out_ids)) != len(out_ids):
        raise ValueError(f"duplicate candidate ids at one position: {out_ids}")
    filler = (i for i in range(len(out_ids) + k) if i not in set(out_ids))
    while len(out_ids) < k:
        out_ids.append(next(filler))
        out_lps.append(-np.inf)
    return np.asarray(out_ids, dtype=np.int64), np.asarray(out_lps, dtype=np.float32)


def align_axolotl_kd(example: Example, row: dict, k: int, logprobs_field: str = "logprobs",
                     alignment: str = "token") -> tuple[np.ndarray, np.ndarray]:
    """``[n_positions, k]`` ids/log-probs at ``example.mask`` positions from one Axolotl KD row."""
    ids, values = _position_entries(row, logprobs_field)
    n, n_entries = len(example.input_ids), len(values)
    if n_entries > n:
        raise ValueError(f"{n_entries} log-prob entries for {n} tokens: the row was truncated differently")
    offset = n - n_entries - (1 if alignment == "token" else 0)
    if alignment not in ("token", "position"):
        raise ValueError("alignment is 'token' (Axolotl / vLLM prompt_logprobs) or 'position'")
    positions = np.flatnonzero(example.mask)
    out_ids = np.zeros((len(positions), k), dtype=np.int64)
    out_lps = np.zeros((len(positions), k), dtype=np.float32)
    for r, t in enumerate(positions):
        j = t - offset
        if j < 0 or j >= n_entries or values[j] is None or len(values[j]) == 0:
            raise ValueError(f"no teacher log-probs for supervised position {t} (row {example.row_id})")
        out_ids[r], out_lps[r] = _fill(ids[j], values[j], k)
    return out_ids, out_lps


def import_axolotl_kd(rows: Iterable[dict], out_dir: str | Path, tokenizer, *, k: int | None = None,
                      temperature: float = 1.0, teacher: str = "axolotl-kd-import", sequence_len: int | None = None,
                      logprobs_field: str = "logprobs", messages_field: str = "messages",
                      alignment: str = "token", tokenize: Callable[[dict], Example] | None = None,
                      vocab_size: int | None = None) -> CaptureStats:
    """Write an Axolotl-KD-format dataset into a store usable as ``teacher_logits``.

    ``tokenize(row) -> Example`` must reproduce training's ids and labels; the default applies
    ``tokenizer``'s chat template to ``messages_field`` (as ``type: chat_template`` does with the
    tokenizer's default template). ``k`` defaults to the smallest candidate count in the first row.
    """
    tokenize = tokenize or (lambda r: tokenize_row(r, tokenizer, sequence_len, messages_field))
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        raise ValueError("no rows to import")
    if k is None:
        k = min(len(v) for v in _position_entries(first, logprobs_field)[1] if v)
    meta = make_meta(teacher, tokenizer, k, temperature, sequence_len, vocab_size or len(tokenizer))
    writer, stats, done = StoreWriter(out_dir, meta), CaptureStats(), stored_keys(out_dir)
    for row in _chain(first, rows):
        example = tokenize(row)
        key = row_key(example.input_ids)
        if key in done or not example.mask.any():
            stats.skipped += 1
            continue
        done.add(key)
        ids, lps = align_axolotl_kd(example, row, k, logprobs_field, alignment)
        writer.add(example.input_ids, example.labels, ids, lps, example.row_id)
        stats.rows += 1
        stats.positions += len(ids)
        stats.tokens += len(example.input_ids)
    writer.close()
    return stats


def _chain(first, rest) -> Iterator:
    yield first
    yield from rest
