"""Self-consistency verification (``distill-data verify --majority``) for prompts without an answer.

A row with no ``answer`` (missing, null or blank) is verified by the vote of its own samples: each
generation's final answer (the text after ``</think>``) is extracted as a key
(:func:`data_prep.verify_math.extract`); the most common key is the row's **pseudo-answer** when at
least two samples give it and no other key is as common. Then a generation with that key is
``correct``, one with another key ``wrong``, one without an answer ``no_answer`` (``timeout`` where
the extraction ran out of time). With no majority (a tie, or no key given twice) the pseudo-answer is
``None`` and the generations that have an answer are ``unverifiable``.

The row records ``verified_by: "majority"``, ``pseudo_answer`` and ``vote_share`` (the top key's
votes over all the row's samples, also on a tie). A row that has an answer is graded against it as
without ``--majority`` and records ``verified_by: "answer"``.
"""

from __future__ import annotations

from collections import Counter

from .pool import TIMEOUT
from .verify_math import CORRECT, NO_ANSWER, UNVERIFIABLE, WRONG
from .verify_math import TIMEOUT as TIMED_OUT


def has_answer(row: dict) -> bool:
    """Does the row carry a reference answer to grade against?"""
    return row.get("answer") is not None and bool(str(row["answer"]).strip())


def vote(keys: list) -> tuple[str | None, float]:
    """``(pseudo-answer or None, the top key's share of all samples)`` for one row's extracted keys
    (``None``: that sample gave no answer)."""
    counts = Counter(k for k in keys if isinstance(k, str))
    if not counts:
        return None, 0.0
    ranked = counts.most_common()
    top, votes = ranked[0]
    share = round(votes / len(keys), 4)
    if votes < 2 or (len(ranked) > 1 and ranked[1][1] == votes):
        return None, share
    return top, share


def verdicts(keys: list, pseudo: str | None) -> list[str]:
    """Each sample's verdict given its key (``None``: no answer; ``pool.TIMEOUT``: timed out)."""
    out = []
    for k in keys:
        if k is TIMEOUT:
            out.append(TIMED_OUT)
        elif k is None:
            out.append(NO_ANSWER)
        elif pseudo is None:
            out.append(UNVERIFIABLE)
        else:
            out.append(CORRECT if k == pseudo else WRONG)
    return out


def verify_by_vote(rows: list[dict], pool, answer_text) -> list[list[str]]:
    """Vote on each row of ``rows`` (none of which has an answer) with ``pool`` (a
    ``verify_math.make_pool(fn=extract_item)``) over ``answer_text(generation)``: sets the row's
    ``verified_by``, ``pseudo_answer`` and ``vote_share``; returns each row's generation verdicts."""
    texts = [answer_text(g) for r in rows for g in r["generations"]]
    keys = iter(list(pool.map(texts)))
    out = []
    for row in rows:
        row_keys = [next(keys) for _ in row["generations"]]
        pseudo, share = vote(row_keys)
        row.update(verified_by="majority", pseudo_answer=pseudo, vote_share=share)
        out.append(verdicts(row_keys, pseudo))
    return out

