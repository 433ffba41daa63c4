"""Per-prompt generation failures: recorded, counted against ``--max-errors``, skipped on resume.

A prompt that fails for good (a non-retryable HTTP status such as a 400 for a prompt over the
server's context, retries exhausted, a response that does not parse) is appended to
``<out>/_errors.jsonl`` (``_errors.shard<i>.jsonl`` with ``--shard i/n``; the ``_`` keeps later
stages from reading it as generations) as ``{"id", "status", "message"}`` and counted in the
report; the run goes on. ``max_errors``: N >= 1 failures, or a fraction (0, 1) of the prompts to
do; one more stops the run cleanly (what is written stays; exit code 2 from the CLI). A resumed run
skips errored prompts, unless asked to retry them (``--retry-errors``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from distill_plugin.generation import GenerationError

from .io import JsonlAppender, done_ids

log = logging.getLogger("data_prep")


class TooManyErrors(ValueError):
    """More prompts failed than ``max_errors`` allows (the run stopped; outputs so far are kept)."""


def error_path(out_dir: str | Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(out_dir) / ("_errors.jsonl" if n == 1 else f"_errors.shard{i}.jsonl")


def errored_ids(out_dir: str | Path) -> set[str]:
    """Ids recorded as failed by any shard of ``out_dir``."""
    out_dir = Path(out_dir)
    return done_ids(out_dir.glob("_errors*.jsonl")) if out_dir.exists() else set()


class ErrorLog:
    """Appends failures to the error file (opened on the first one) and enforces ``max_errors``."""

    def __init__(self, path: Path, max_errors: float | None, todo: int, keep: int = 20, stage: str = "generate"):
        self.path, self.max_errors, self.keep, self.stage = path, max_errors, keep, stage
        self.limit = None if max_errors is None else (max_errors * todo if max_errors < 1 else max_errors)
        self.count = 0
        self.by_status: Counter[str] = Counter()
        self.examples: list[dict] = []
        self.sink: JsonlAppender | None = None

    def record(self, row_id: str, error: GenerationError) -> None:
        entry = {"id": row_id, "status": error.status, "message": str(error)}
        if self.sink is None:
            self.sink = JsonlAppender(self.path)
        self.sink.write(entry)
        self.count += 1
        self.by_status[str(error.status)] += 1
        if len(self.examples) < self.keep:
            self.examples.append(entry)
        log.warning("%s: prompt %s failed (%s): %s", self.stage, row_id, error.status, error)
        if self.limit is not None and self.count > self.limit:
            raise TooManyErrors(f"{self.count} prompts failed, more than --max-errors {self.max_errors:g}: "
                                f"stopped (finished rows are kept); failures in {self.path}")

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def as_dict(self) -> dict:
        return {"count": self.count, "by_status": dict(self.by_status), "examples": self.examples,
                "file": self.path.name if self.count else None}
