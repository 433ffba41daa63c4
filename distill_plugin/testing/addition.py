"""A synthetic task with checkable answers: column addition with the working in ``<think>``.

    user:       What is 47+38?
    assistant:  <think>
                7+8=15, carry 1; 4+3+1=8
                </think>
                85

Used by the tests, the recipes' tiny twins and the quality benchmark's certain-teacher regime: small enough for a tiny model to learn on CPU in
minutes, structured like R1 data (reasoning, then the answer), and scored by exact match. The quality
benchmark (``benchmarks/bench_quality.py``) uses more digits, one column per step of the working
(``647+589``: ``7+9=16, carry 1; 4+8+1=13, carry 1; 6+5+1=12``, answer ``1236``): the answer is read
off the columns' last digits, so the student must carry the working through several steps; and R1's
layout (a blank line after ``</think>``, what ``distill-data export`` writes) so that ground-truth
and teacher-generated rows share one format.
"""

from __future__ import annotations

import random
import re


def working(a: int, b: int, digits: int = 2) -> str:
    """The column-addition working shown inside <think>: ones column first, one ``;``-separated step
    per column; every column but the last notes its carry, the last writes its full sum."""
    steps, carry = [], 0
    for col in range(digits):
        x, y = a // 10**col % 10, b // 10**col % 10
        total = x + y + carry
        step = f"{x}+{y}" + ("+1" if carry else "") + f"={total}"
        carry = total // 10
        if carry and col < digits - 1:
            step += ", carry 1"
        steps.append(step)
    return "; ".join(steps)


def make_example(rng: random.Random, digits: int = 2, r1_layout: bool = False) -> dict:
    """One ``digits``-digit problem; ``r1_layout`` puts a blank line between ``</think>`` and the answer."""
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    gap = "\n\n" if r1_layout else "\n"
    return {
        "id": f"add-{a}-{b}",
        "messages": [
            {"role": "user", "content": f"What is {a}+{b}?"},
            {"role": "assistant", "content": f"<think>\n{working(a, b, digits)}\n</think>{gap}{a + b}"},
        ],
        "answer": str(a + b),
    }


def make_split(n: int, seed: int, exclude: set[str] | None = None, digits: int = 2, r1_layout: bool = False) -> list[dict]:
    """``n`` distinct problems (none of whose ids are in ``exclude``)."""
    rng, seen, rows = random.Random(seed), set(exclude or ()), []
    while len(rows) < n:
        row = make_example(rng, digits, r1_layout)
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows


def final_answer(text: str) -> str | None:
    """The text after the last ``</think>``, stripped to its leading integer."""
    tail = text.split("</think>")[-1] if "</think>" in text else None
    if tail is None:
        return None
    match = re.match(r"\s*(-?\d+)", tail)
    return match.group(1) if match else None
