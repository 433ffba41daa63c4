"""A synthetic task with checkable answers: two-digit addition with a short ``<think>`` working.

    user:       What is 47+38?
    assistant:  <think>
                7+8=15, carry 1; 4+3+1=8
                </think>
                85

Used by the embedded demo and the tests: small enough for a tiny model to learn on CPU in minutes,
structured like R1 data (reasoning, then the answer), and scored by exact match.
"""

from __future__ import annotations

import random
import re


def working(a: int, b: int) -> str:
    """The column-addition working shown inside <think>."""
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    first = f"{a % 10}+{b % 10}={ones}" + (", carry 1" if carry else "")
    second = f"{a // 10}+{b // 10}" + ("+1" if carry else "") + f"={tens}"
    return f"{first}; {second}"


def make_example(rng: random.Random) -> dict:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {
        "id": f"add-{a}-{b}",
        "messages": [
            {"role": "user", "content": f"What is {a}+{b}?"},
            {"role": "assistant", "content": f"<think>\n{working(a, b)}\n</think>\n{a + b}"},
        ],
        "answer": str(a + b),
    }


def make_split(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct problems (none of whose ids are in ``exclude``)."""
    rng, seen, rows = random.Random(seed), set(exclude or ()), []
    while len(rows) < n:
        row = make_example(rng)
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
