"""Input field mapping and the R1 output format (``<think>…</think>`` then the answer).

Input rows are mapped to a canonical record ``{id, prompt, answer, tests, choices, source}``.
Each field name is configurable; when not given, the first present of common names is used
(``problem``/``question``/``prompt``, ``answer``/``solution``/...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel

from .io import SkipLog, stable_id
from .rows import PromptRow, row_error

DEFAULT_CANDIDATES = {
    "id": ["id", "uid", "problem_id", "task_id", "question_id"],
    "prompt": ["prompt", "problem", "question", "input", "instruction"],
    "answer": ["answer", "solution", "gold", "target", "expected_answer", "final_answer"],
    "tests": ["tests", "test_cases", "input_output", "test"],
    "choices": ["choices", "options"],
    "source": ["source", "dataset", "data_source"],
}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class FieldMap(BaseModel):
    """Names of the input fields; ``None`` = auto-detect from :data:`DEFAULT_CANDIDATES`."""

    id: str | None = None
    prompt: str | None = None
    answer: str | None = None
    tests: str | None = None
    choices: str | None = None
    source: str | None = None

    def pick(self, row: dict, key: str):
        name = getattr(self, key)
        if name is not None:
            return row.get(name)
        for cand in DEFAULT_CANDIDATES[key]:
            if cand in row and row[cand] is not None:
                return row[cand]
        return None


def canonical_row(row: dict, fields: FieldMap, where: tuple[str, int], skips: SkipLog,
                  default_source: str = "") -> dict | None:
    """Map one input row to the canonical record (:class:`data_prep.rows.PromptRow`), or skip it
    (counted, with file:line and the reason)."""
    path, lineno = where
    prompt = fields.pick(row, "prompt")
    if prompt is None:
        skips.skip(path, lineno, "missing_prompt",
                   f"no field {fields.prompt or DEFAULT_CANDIDATES['prompt']}")
        return None
    if isinstance(prompt, (str, list)) and not (prompt.strip() if isinstance(prompt, str) else prompt):
        skips.skip(path, lineno, "empty_prompt")
        return None
    rid, answer = fields.pick(row, "id"), fields.pick(row, "answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    rec = {"id": str(rid) if rid is not None else "", "prompt": prompt, "answer": answer,
           "tests": fields.pick(row, "tests"), "choices": fields.pick(row, "choices"),
           "source": str(fields.pick(row, "source") or default_source)}
    why = row_error(PromptRow, rec)
    if why:
        skips.skip(path, lineno, "invalid_row", why)
        return None
    if rid is None:
        rec["id"] = stable_id(prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt))
    return rec


@dataclass
class Split:
    """A generation split into reasoning and final answer; ``closed`` = ``</think>`` was seen."""

    reasoning: str
    content: str
    closed: bool


def split_reasoning(text: str, prefilled_think: bool = False) -> Split:
    """Split ``<think>R</think>A`` into ``R`` and ``A``.

    ``prefilled_think``: the prompt ended in ``<think>\\n``, so the text starts inside the reasoning.
    Text with no think tags at all is all answer (``closed=False``, reasoning empty).
    """
    body = text
    opened = prefilled_think
    m = re.match(r"\s*<think>", body)
    if m:
        body, opened = body[m.end():], True
    if THINK_CLOSE in body:
        reasoning, content = body.split(THINK_CLOSE, 1)
        return Split(reasoning.strip("\n"), content.strip(), True)
    if opened:
        return Split(body.strip("\n"), "", False)
    return Split("", text.strip(), False)


def join_reasoning(reasoning: str, content: str) -> str:
    """The canonical assistant text ``<think>\\nR\\n</think>\\n\\nA`` (R1's own layout)."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.strip()}"
