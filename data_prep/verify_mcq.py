"""Multiple choice: extract the chosen letter from the answer text and compare with the gold."""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase[:10]  # A-J
_PATTERNS = [
    r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?\s*\}",
    r"(?i:answer|choice|option)\s*(?i:is|:)?\s*[:\-]?\s*\**\s*\(?([A-J])\)?(?![A-Za-z])",
    r"\*\*\(?([A-J])\)?\*\*",
    r"^\s*\(?([A-J])\)?[.):]?\s*$",
]


def extract_letter(text: str) -> str | None:
    """The last explicitly marked letter (boxed, "answer is X", bold, or a bare line)."""
    if not text:
        return None
    for pat in _PATTERNS:
        hits = re.findall(pat, text, flags=re.MULTILINE)
        if hits:
            return hits[-1].upper()
    return None


def gold_letter(answer, choices=None) -> str | None:
    """Gold as a letter: a letter, a 0-based index, or the text of one of ``choices``."""
    if answer is None:
        return None
    if isinstance(answer, int) and not isinstance(answer, bool):
        return LETTERS[answer] if 0 <= answer < len(LETTERS) else None
    a = str(answer).strip()
    m = re.fullmatch(r"\(?([A-Ja-j])\)?\.?", a)
    if m:
        return m.group(1).upper()
    if choices:
        items = list(choices.values()) if isinstance(choices, dict) else list(choices)
        for i, c in enumerate(items):
            if str(c).strip() == a:
                return LETTERS[i]
    return None


def check(answer, prediction: str, choices=None) -> str:
    """``correct`` | ``wrong`` | ``no_answer`` | ``unverifiable`` (gold not a letter)."""
    gold = gold_letter(answer, choices)
    if gold is None:
        return "unverifiable"
    got = extract_letter(prediction)
    if got is None:
        return "no_answer"
    return "correct" if got == gold else "wrong"
