"""JSONL input/output: errors that name file and line, crash-safe appends, torn-line tolerance.

Reading never loses what is already written: a malformed line (bad JSON, not an object, invalid
UTF-8) is reported as ``file:line: reason``, counted and skipped, or raised as :class:`InputError`
when ``strict``. A last line without its trailing newline is a *torn* write from a killed run: it is
ignored when reading and cut off (only that line) before the next append.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("data_prep")


class InputError(ValueError):
    """A bad input line in ``--strict`` mode (message names file and line)."""


class SkipLog:
    """Counts skipped input lines by reason and keeps the first messages for the report."""

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


def input_files(path: str | Path, pattern: str = "*.jsonl") -> list[Path]:
    """A file, or the sorted ``pattern`` files of a directory (report/_ files excluded)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob(pattern) if not f.name.startswith("_"))
        if not files:
            raise FileNotFoundError(f"no {pattern} files in {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    return [p]


def read_jsonl(path: str | Path, skips: SkipLog | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each valid JSON-object line of ``path``.

    Blank lines are ignored silently; a torn last line (no trailing newline, invalid JSON) is
    ignored with a warning even in strict mode, since it is the signature of an interrupted write.
    """
    skips = skips or SkipLog()
    path = Path(path)
    with open(path, "rb", buffering=1 << 20) as fh:  # line by line: memory is one row, not the file
        for i, raw in enumerate(fh):
            lineno = i + 1
            is_last_unterminated = not raw.endswith(b"\n")  # only the last line can lack its newline
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
                if is_last_unterminated:
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
    """Cut a trailing partial line (no final newline) off ``path``; return bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # scan back for the last newline
        pos, chunk = size, 4096
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        else:
            keep = 0
        fh.seek(keep)
        tail = fh.read()
        try:  # a complete row that only lacks its newline (written by someone else): keep it
            if isinstance(json.loads(tail), dict):
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
                return 0
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        fh.truncate(keep)
        log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
        return size - keep


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
        self.fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
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
    """Write all ``rows`` to ``path`` via a temp file + rename (all or nothing); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:  # e.g. a bad input row under --strict: leave no half-written temp file
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


def stable_id(text: str, prefix: str = "") -> str:
    """A stable id for a prompt without one: sha256 of its text (first 16 hex digits)."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) → ``(i, n)``; ``None`` → ``(0, 1)``."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError as e:
        raise ValueError(f"--shard must look like 'i/n', got {spec!r}") from e
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_of(row_id: str, num_shards: int) -> int:
    """The shard that owns ``row_id``: a hash, so independent of input order."""
    return int(hashlib.md5(row_id.encode("utf-8")).hexdigest(), 16) % num_shards
