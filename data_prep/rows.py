"""One schema (pydantic, strict types) for the rows every stage reads.

* :class:`PromptRow`: the canonical prompt record ``generate`` builds from an input row
  (:func:`data_prep.schema.canonical_row` maps the field names first).
* :class:`GenerationRow`: a prompt record plus its ``generations``: what ``verify``, ``judge``,
  ``filter`` and ``export`` read (``verify`` adds ``verdict``/``correct`` and the row's
  ``n_correct``/``n_checked``/``pass_rate``; ``judge`` adds ``score`` and ``judge``).

Rows are validated, not converted: a stage keeps the row as it was read (unknown fields pass
through) and only learns whether it is well-formed. :func:`row_error` gives the first problem as
``field.path: reason`` so the skip message reads ``file:line: invalid_row: generations.0.content:
Input should be a valid string``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Message(_Row):
    role: str
    content: str


class PromptRow(_Row):
    id: str | int
    prompt: str | list[Message] = Field(min_length=1)
    answer: str | int | float | None = None
    tests: Any = None  # code tests come in several shapes (data_prep.verify_code.normalize_tests)
    choices: list | dict | None = None
    source: str = ""


class Judgement(_Row):
    """What ``distill-data judge`` kept beside a generation's ``score``."""

    status: Literal["ok", "no_score", "ambiguous", "out_of_range", "too_long"]
    reasoning: str | None = None  # the LLM judge's reply (its explanation); None for a reward model


class Generation(_Row):
    text: str
    reasoning: str = ""
    content: str = ""
    think_closed: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    correct: bool | None = None
    verdict: str | None = None
    score: float | None = None  # None: judged but unscored (see judge.status)
    judge: Judgement | None = None


class GenerationRow(PromptRow):
    messages: list[Message] | None = None
    generations: list[Generation]
    n_checked: int | None = None
    pass_rate: float | None = Field(None, ge=0, le=1)
    judge_meta: dict | None = None


def row_error(model: type[BaseModel], row: dict) -> str | None:
    """``None`` if ``row`` fits ``model``, else its first problem as ``field.path: message``."""
    try:
        model.model_validate(row)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        field = errs[0]["loc"][0]
        mine = [x for x in errs if x["loc"][:1] == (field,)]
        err = max(mine, key=lambda x: len(x["loc"]))  # a union: the branch that got deepest
        if len(mine) > 1 and len(err["loc"]) <= 2:  # no branch got inside: the type is wrong
            expected = str(model.model_fields[field].annotation).replace("data_prep.rows.", "")
            return f"{field}: expected {expected}, got {type(row.get(field)).__name__}"
        path = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        got = "" if err["type"] == "missing" else f" (got {type(err['input']).__name__})"
        return f"{path}: {err['msg']}{got}"
    return None


def _is_union_tag(part) -> bool:
    """pydantic names the union branch in an error's location (``'str'``, ``'list[Message]'``)."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list"} or "[" in part)
