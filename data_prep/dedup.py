"""Text overlap logic: normalisation, word n-grams, exact/near-duplicate detection, contamination.

Normalisation (both for dedup and decontamination): lower-case, every non-alphanumeric run becomes
one space, whitespace collapsed. Near duplicates: MinHash over word 3-gram shingles with
``datasketch.MinHashLSH`` (Jaccard threshold, default 0.8). Contamination: a prompt that shares any
word ``n``-gram (default 8) with a benchmark item is contaminated; a benchmark item shorter than
``n`` words matches only a prompt that is the whole item (after normalisation): a short item such
as "Compute 2+3." found inside a longer prompt is too weak a signal to drop it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return _NON_WORD.sub(" ", str(text).lower()).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def prompt_text(prompt) -> str:
    """A prompt as text (chat prompts: their user turns joined)."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") != "system")
    return str(prompt)


def exact_key(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()


class NearDuplicateIndex:
    """Streaming near-duplicate detector: ``seen_similar(key, text)`` then inserts the text."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self._MinHash, self.num_perm, self.shingle, self.seed = MinHash, num_perm, shingle, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def _minhash(self, text: str):
        ws = words(text)
        shingles = ngrams(ws, self.shingle) if len(ws) >= self.shingle else {tuple(ws)}
        m = self._MinHash(num_perm=self.num_perm, seed=self.seed)
        for s in shingles:
            m.update(" ".join(s).encode())
        return m

    def seen_similar(self, key: str, text: str) -> list[str]:
        """Keys of earlier similar texts (then this one is indexed, unless it matched)."""
        m = self._minhash(text)
        hits = self.lsh.query(m)
        if not hits:
            self.lsh.insert(key, m)
        return hits


class ContaminationIndex:
    """Word n-gram index of benchmark texts."""

    def __init__(self, texts: Iterable[str], n: int = 8):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.short_items: set[str] = set()  # normalised items of fewer than n words
        self.size = 0
        for t in texts:
            ws = words(t)
            if not ws:
                continue
            self.size += 1
            if len(ws) >= n:
                self.grams |= ngrams(ws, n)
            else:
                self.short_items.add(" ".join(ws))

    def overlaps(self, text: str) -> bool:
        ws = words(text)
        return " ".join(ws) in self.short_items or any(g in self.grams for g in ngrams(ws, self.n))
