"""JSONL, the one reader and writer of the project: errors that name file and line, crash-safe
appends, torn-line tolerance.

Reading streams line by line and never loses what is already written: a malformed line (bad JSON,
not an object, invalid UTF-8) is reported as ``file:line: reason``, counted and skipped, or raised
as :class:`InputError` when ``strict``. A last line without its trailing newline is a *torn* write
from a killed run: it is ignored when reading and cut off (only that line) before the next append
(:func:`repair_torn_tail`).

Writing: :class:`JsonlAppender` (one row per ``write``, flushed and fsync'ed: resumable outputs)
and :func:`write_jsonl_atomic` (a whole file via a temp file and a rename: all or nothing).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("distill_plugin.jsonl")


class InputError(ValueError):
    """A bad input line in strict mode (the message names file and line)."""


class SkipLog:
    """Counts skipped input lines by reason and keeps the first messages for a report."""

    def __init__(self, strict: bool = False, keep: int = 20):
        self.strict, self.keep = strict, keep
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []

    def skip(self, path: str | Path, lineno: int, reason: str, detail: str = "") -> None:
        msg = f"{path}:{lineno}: {reason}{': ' + detail if detail else ''}"
        if self.strict:
            raise InputError(msg)
        self.counts[reason] += 1
        if len(self.messages) < self.keep:
            self.messages.append(msg)
        log.warning("skipped %s", msg)

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.messages}


def read_jsonl(path: str | Path, skips: SkipLog | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each valid JSON-object line of ``path``, streaming.

    Blank lines are ignored silently; a torn last line (no trailing newline, invalid JSON) is
    ignored with a warning even in strict mode, since it is the signature of an interrupted write.
    """
    skips = skips if skips is not None else SkipLog()
    path = Path(path)
    with open(path, "rb", buffering=1 << 20) as fh:  # R1 rows are 100+ KB: a large read buffer
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skips.skip(path, lineno, "not_utf8", str(e))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n"):  # only the last line can lack its newline
                    log.warning("%s:%d: ignoring torn last line (interrupted write)", path, lineno)
                    continue
                skips.skip(path, lineno, "malformed_json", e.msg)
                continue
            if not isinstance(obj, dict):
                skips.skip(path, lineno, "not_an_object", type(obj).__name__)
                continue
            yield lineno, obj


def read_rows(paths: Iterable[str | Path], skips: SkipLog | None = None) -> Iterator[tuple[str, int, dict]]:
    """``read_jsonl`` over several files: yields ``(file, line, object)``."""
    for p in paths:
        for lineno, obj in read_jsonl(p, skips):
            yield str(p), lineno, obj


def repair_torn_tail(path: str | Path) -> int:
    """Cut a trailing partial line (no final newline) off ``path``; return the bytes removed.

    A complete JSON object that only lacks its newline is kept (the newline is added).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        pos, keep = size, 0  # scan back for the last newline
        while pos > 0:
            start = max(0, pos - 4096)
            fh.seek(start)
            idx = fh.read(pos - start).rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        fh.seek(keep)
        tail = fh.read()
        try:
            if isinstance(json.loads(tail), dict):
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
                return 0
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        fh.truncate(keep)
        log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
        return size - keep


def dumps(row: dict) -> str:
    """One JSONL line (UTF-8 kept as is, no trailing newline)."""
    return json.dumps(row, ensure_ascii=False)


class JsonlAppender:
    """Append finished rows to a JSONL file, one ``write`` + flush (+ fsync) per row.

    A kill can only ever tear the last line; :func:`repair_torn_tail` runs on open.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.fh = open(self.path, "ab")
        self.fsync = fsync
        self.count = 0

    def write(self, row: dict) -> None:
        self.fh.write((dumps(row) + "\n").encode("utf-8"))
        self.fh.flush()
        if self.fsync:
            os.fsync(self.fh.fileno())
        self.count += 1

    def close(self) -> None:
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    """Write all ``rows`` to ``path`` via a temp file + rename (all or nothing); return the count.

    On an error the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(dumps(row) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return n


def done_ids(paths: Iterable[str | Path]) -> set[str]:
    """Ids already written in the given output files (missing files are fine)."""
    ids: set[str] = set()
    for p in paths:
        if Path(p).exists():
            for _, obj in read_jsonl(p, SkipLog()):
                if "id" in obj:
                    ids.add(str(obj["id"]))
    return ids
