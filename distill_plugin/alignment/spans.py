"""Span alignment of two tokenisations of the same text, from byte offsets, vectorised (numpy).

Student tokens end at byte offsets e^s_1 < e^s_2 < …, teacher tokens at e^t_1 ≤ e^t_2 ≤ … (two
teacher tokens may end on the same character when a byte-level tokenizer splits a multi-byte
character; the offset mapping is per character). A *common boundary* b is an offset where a token
ends on both sides. Consecutive common boundaries cut both token sequences into aligned spans that
cover exactly the same text: a word one side splits and the other keeps whole is one span.

Which positions are compared, and why: the distribution at position t predicts token t+1 (the
package's shift convention). At a common boundary b, the student position p whose token ends at b
and the teacher position q whose token ends at b both predict *the text that starts at b* — the
first token of the next span on each side. So each aligned span is scored at the last position of
the span before it (equivalently: at every common boundary), and those are the only positions where
the two next-token distributions describe the same continuation of the same prefix. A span's
interior positions predict text the other side has no matching prefix for; they get CE only.

A pair (p, q) is kept when
    • b lies in an *identical region* [r_s, r_e) of the two texts (the whole text when both sides see
      the same rendering; each message's content when the teacher uses its own chat template) — the
      boundary at the region's end predicts what follows the content (an end-of-turn token, spelt
      differently by each template) and is left out;
    • the student's token p+1 is supervised (labels[p+1] != -100) and not empty;
    • q is the *last* teacher token ending at b (its successor starts at b).
An answer that starts in the middle of a token (a token crossing the region start) simply has no
boundary there: its first aligned span starts at the next common boundary.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Region(NamedTuple):
    """Bytes [student_start, student_end) of the student text equal bytes [teacher_start, …) of the teacher's."""

    student_start: int
    student_end: int
    teacher_start: int


def char_to_byte_offsets(text: str) -> np.ndarray:
    """[len(text) + 1] byte offset of every character boundary (vectorised over code points)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(width)])


def teacher_byte_ends(offsets: np.ndarray, text: str) -> np.ndarray:
    """[m] byte end offsets from a fast tokenizer's character ``offset_mapping`` [m, 2]."""
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.int64)
    return char_to_byte_offsets(text)[np.asarray(offsets)[:, 1]]


def aligned_pairs(student_ends: np.ndarray, teacher_ends: np.ndarray, supervised: np.ndarray,
                  regions: list[Region] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Student and teacher positions (p, q) compared by the loss, in increasing order of p.

    Args:
        student_ends: [n] byte end offset of each student token (student text coordinates).
        teacher_ends: [m] byte end offset of each teacher token (teacher text coordinates), non-decreasing.
        supervised: [n] bool, ``labels[t] != -100`` for each student token t.
        regions: identical text regions, see ``Region``.
    """
    student_ends, teacher_ends = np.asarray(student_ends, np.int64), np.asarray(teacher_ends, np.int64)
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, 3)
    n = len(student_ends)
    if n < 2 or len(teacher_ends) == 0 or len(regions) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = np.arange(n - 1)
    b = student_ends[:-1]
    keep = np.asarray(supervised[1:], bool) & (student_ends[1:] > b)  # next token supervised, not empty
    # The region holding each boundary (regions are disjoint and sorted by student start).
    order = np.argsort(regions[:, 0])
    regions = regions[order]
    r = np.searchsorted(regions[:, 0], b, side="right") - 1
    inside = (r >= 0) & (b < regions[np.clip(r, 0, None), 1])
    keep &= inside
    p, b, r = p[keep], b[keep], r[keep]
    target = b - regions[r, 0] + regions[r, 2]  # the boundary in teacher coordinates
    q = np.searchsorted(teacher_ends, target, side="right") - 1
    hit = (q >= 0) & (teacher_ends[np.clip(q, 0, None)] == target)
    return p[hit], q[hit]
