"""What an LLM judge is asked, and the strict reading of its score.

The default rubric is MT-Bench's single-answer grading (Zheng et al. 2023, "Judging LLM-as-a-Judge
with MT-Bench and Chatbot Arena", prompts ``single-v1`` and ``single-math-v1``): the judge explains,
then rates the answer 1–10 as ``Rating: [[N]]``. A row with a reference answer (``answer``) is
graded against it (``single-math-v1``: compare with the reference, identify mistakes).

A user rubric is a YAML file (keys of :class:`Rubric`; ``prompt`` must contain ``{question}`` and
``{answer}``, ``prompt_with_reference`` also ``{reference}``) or a plain text file used as
``prompt``. Placeholders are replaced literally (no ``str.format``), so a rubric may hold other
braces (JSON examples).

Parsing is strict: every match of ``score_pattern`` in the reply is read; no match is
``no_score``, two different values are ``ambiguous``, a value outside ``scale`` is
``out_of_range``. In all three cases the score is ``None`` — never a silent 0 — and the filter
stage treats it as unscored.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .io import InputError

_INSTRUCTION = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. ")
_FORMAT = (
    "Begin your evaluation by providing a short explanation. Be as objective as possible. After "
    "providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    "following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".")

DEFAULT_PROMPT = (
    "[Instruction]\n" + _INSTRUCTION
    + "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
    "creativity, and level of detail of the response. " + _FORMAT
    + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")

DEFAULT_PROMPT_WITH_REFERENCE = (
    "[Instruction]\n" + _INSTRUCTION
    + "Your evaluation should consider correctness and helpfulness. You will be given a reference "
    "answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer "
    "with the reference answer. Identify and correct any mistakes. Be as objective as possible. "
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    "following this format: \"[[rating]]\", for example: \"Rating: [[5]]\"."
    "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{reference}\n"
    "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")

_PLACEHOLDER = re.compile(r"\{(question|answer|reference)\}")
SCORE_PATTERN = r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"


class Rubric(BaseModel):
    """A judge prompt, its score scale and the pattern its score is read with."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    system: str | None = "You are a helpful assistant."
    prompt: str = DEFAULT_PROMPT
    prompt_with_reference: str | None = DEFAULT_PROMPT_WITH_REFERENCE  # None: `prompt` for every row
    scale: tuple[float, float] = (1, 10)
    score_pattern: str = SCORE_PATTERN  # one capture group: the number

    @model_validator(mode="after")
    def _check(self) -> "Rubric":
        for key, need in (("prompt", ("{question}", "{answer}")),
                          ("prompt_with_reference", ("{question}", "{answer}", "{reference}"))):
            text = getattr(self, key)
            missing = [p for p in need if text is not None and p not in text]
            if missing:
                raise ValueError(f"{key} lacks the placeholder(s) {', '.join(missing)}")
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as e:
            raise ValueError(f"score_pattern is not a regular expression: {e}") from None
        if groups != 1:
            raise ValueError(f"score_pattern must have exactly one capture group (the score), it has {groups}")
        if not self.scale[0] < self.scale[1]:
            raise ValueError(f"scale must be [low, high] with low < high, got {list(self.scale)}")
        return self

    def messages(self, question: str, answer: str, reference: str | None = None) -> list[dict]:
        """The chat sent to the judge for one answer."""
        template = self.prompt_with_reference if reference and self.prompt_with_reference else self.prompt
        values = {"question": question, "answer": answer, "reference": reference or ""}
        text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)  # one pass: a question may hold "{answer}"
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": text}]

    def parse(self, reply: str) -> tuple[float | None, str]:
        """``(score, status)``: status ``ok``, or ``no_score`` / ``ambiguous`` / ``out_of_range``
        with score ``None``."""
        values = {float(m) for m in re.findall(self.score_pattern, reply or "")}
        if not values:
            return None, "no_score"
        if len(values) > 1:
            return None, "ambiguous"
        (score,) = values
        if not self.scale[0] <= score <= self.scale[1]:
            return None, "out_of_range"
        return score, "ok"


def load_rubric(spec: str) -> Rubric:
    """``"default"``, or a rubric file: YAML (``.yml``/``.yaml``, keys of :class:`Rubric`) or plain
    text (the ``prompt``). A bad file is one :class:`InputError` naming it."""
    if spec == "default":
        return Rubric()
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"{path}: rubric file not found (--rubric takes 'default' or a .yml/.txt file)")
    try:
        if path.suffix in (".yml", ".yaml"):
            from .pipeline import _read_yaml, unknown_key

            raw = _read_yaml(path)
            bad = unknown_key(Rubric, raw)
            if bad:
                raise InputError(f"{path}: {bad}")
            return Rubric.model_validate({"name": path.stem, **raw})
        return Rubric(name=path.stem, prompt=path.read_text(encoding="utf-8"), prompt_with_reference=None)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(map(str, err["loc"]))
        raise InputError(f"{path}: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}") from None


def reference_of(row: dict) -> str | None:
    """The row's reference answer, when it has a non-empty one."""
    ans = row.get("answer")
    return str(ans) if ans is not None and str(ans).strip() else None


def answer_of(gen: dict) -> str:
    """What is judged: the final answer (text after ``</think>``; the whole text without think tags)."""
    return gen.get("content") or ""
