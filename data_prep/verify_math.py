"""Maths answer checking with math-verify.

Rules (see docs/data_prep.md): the *gold* answer is parsed first; if it yields nothing the item is
``unverifiable`` (not wrong). The prediction is the final answer text (after ``</think>``), so a
``\\boxed{}`` inside the reasoning is never mistaken for the answer. ``verify(gold, pred)``: the
order matters (gold is the reference). Every ``\\boxed{}`` of the answer is graded together as one set,
and a ``\\%`` matches both ``x`` and ``x/100`` (math-verify's behaviour, documented and tested).
math-verify's own timeouts use ``signal.alarm``, which fails
off the main thread, so they are disabled here and a hard per-item timeout is enforced by
:class:`data_prep.pool.HardTimeoutPool`.
"""

from __future__ import annotations

import logging
import re
import warnings

logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": on purpose

CORRECT, WRONG, UNVERIFIABLE, NO_ANSWER, TIMEOUT = "correct", "wrong", "unverifiable", "no_answer", "timeout"


_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_ENV_MARK = re.compile(r"\\(?:begin|end)\s*\{[a-zA-Z*]*\}")
_WORD = re.compile(r"[A-Za-z]{3,}")


def is_prose(text: str) -> bool:
    """Is the gold prose rather than maths (``see the proof above``, ``\\text{proof omitted}``)?

    Prose: a word of 3+ letters outside LaTeX commands, ``\\text{}``-like groups and environment
    markers (``\\begin{pmatrix}``), or a gold made only of ``\\text{}`` holding two or more such
    words. So ``\\text{Monday}``, ``\\text{June 20}``, ``5\\text{ square feet}`` and matrices are
    maths; math-verify would turn a prose gold into a product of one-letter symbols.
    """
    inside = " ".join(_TEXT_GROUP.findall(text))
    outside = re.sub(r"\\[a-zA-Z]+", " ", _TEXT_GROUP.sub(" ", _ENV_MARK.sub(" ", text)))
    if _WORD.search(outside):
        return True
    return not re.search(r"[0-9A-Za-z]", outside) and len(_WORD.findall(inside)) >= 2


def gold_candidates(gold: str) -> list[str]:
    """Strings to parse the gold from, best first. A bare maths gold is wrapped in ``$…$`` (so sets,
    intervals, ``2,3``, matrices and ``\\text{}`` words parse as LaTeX); prose is not (wrapped,
    every letter would become a symbol)."""
    g = str(gold).strip().rstrip(".").replace("\\$", "")
    if "\\boxed" in g or re.search(r"(?<!\\)\$", g) or is_prose(g):
        return [g]
    return [f"${g}$", g]


def _parse(text: str):
    from math_verify import parse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse(text, parsing_timeout=None)


def check(gold: str, prediction: str) -> str:
    """``correct`` | ``wrong`` | ``unverifiable`` (gold unparseable) | ``no_answer``."""
    from math_verify import verify

    gold_parsed = None
    for cand in gold_candidates(gold):
        gold_parsed = _parse(cand)
        if gold_parsed:
            break
    if not gold_parsed:
        return UNVERIFIABLE
    if not prediction or not prediction.strip():
        return NO_ANSWER
    pred_parsed = _parse(prediction)
    if not pred_parsed:
        return NO_ANSWER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)  # gold first
    return CORRECT if ok else WRONG


def check_item(item: tuple[str, str]) -> str:
    """Pool entry point: ``(gold, prediction)`` → status; exceptions count as ``no_answer``."""
    try:
        return check(*item)
    except Exception:
        return NO_ANSWER


def extract(prediction: str) -> str | None:
    """The final answer of ``prediction`` as a comparable key (``None``: no answer found): the value
    math-verify parses (the first that :func:`check` would grade), printed by sympy, a number as an
    exact rational first. So ``1236``, ``\\boxed{1236}``, ``1,236`` and ``1236.0`` are one key, and
    ``0.5`` and ``1/2`` another; values sympy prints differently (a set and a tuple of the same
    numbers) stay apart."""
    import sympy

    if not prediction or not prediction.strip():
        return None
    parsed = _parse(prediction)
    if not parsed:
        return None
    value = parsed[0]
    if isinstance(value, sympy.Basic) and value.is_number:
        try:
            value = sympy.nsimplify(value, rational=True)
        except Exception:  # pragma: no cover - sympy refusing a number: keep it as parsed
            pass
    return str(value)


def extract_item(prediction: str) -> str | None:
    """Pool entry point: ``prediction`` → :func:`extract`; exceptions count as no answer."""
    try:
        return extract(prediction)
    except Exception:
        return None


def make_pool(workers: int = 2, timeout_s: float = 5.0, fn=check_item):
    """Worker processes running ``fn`` (:func:`check_item`, or :func:`extract_item`) with a hard
    per-item timeout."""
    from .pool import HardTimeoutPool

    return HardTimeoutPool(fn, workers=workers, timeout_s=timeout_s, preload=["math_verify", "sympy"])
