"""data_prep's file helpers: input discovery and stable ids.

JSONL reading/writing and the shard rule are the library's (``distill_plugin.jsonl``,
``distill_plugin.shards``); they are re-exported here so the stages import them from one place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distill_plugin.jsonl import (InputError, JsonlAppender, SkipLog, done_ids, read_jsonl, read_rows,
                                  repair_torn_tail, write_jsonl_atomic)
from distill_plugin.shards import parse_shard, shard_of

__all__ = ["InputError", "JsonlAppender", "RoomGuard", "SkipLog", "done_ids", "input_files", "parse_shard", "read_jsonl",
           "read_rows", "repair_torn_tail", "shard_of", "stable_id", "write_jsonl_atomic"]


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


def stable_id(text: str, prefix: str = "") -> str:
    """A stable id for a prompt without one: sha256 of its text (first 16 hex digits)."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class RoomGuard:
    """Appends rows through ``sink`` (a ``JsonlAppender``) while watching the disk (``generate``, ``verify``).

    After ``measure_after`` rows, the bytes per row measured so far size the ``rows_todo`` rows still
    to do (when known); when the filesystem cannot hold them the run stops with ``DiskFullError``
    (one line: the path, the free space, the estimate), the rows written kept for the resume. A write
    that meets a full disk removes its torn line and raises the same error.
    """

    def __init__(self, sink, rows_todo: int | None, measure_after: int = 4):
        self.sink, self.rows_todo, self.measure_after = sink, rows_todo, measure_after
        self.start = sink.fh.tell()
        self.estimated: int | None = None

    def write(self, row: dict) -> None:
        from distill_plugin.offline import DiskFullError, check_room, estimate_bytes, is_disk_full

        before = self.sink.fh.tell()
        try:
            self.sink.write(row)
        except OSError as err:
            if not is_disk_full(err):
                raise
            try:
                self.sink.fh.close()  # its buffer cannot be written either
            except OSError:
                pass
            os.truncate(self.sink.path, before)  # no torn line left behind
            self.sink.fh = open(self.sink.path, "ab")
            raise DiskFullError(self.sink.path, self.estimated) from None
        if self.rows_todo is not None and self.sink.count == self.measure_after < self.rows_todo:
            per_row = (self.sink.fh.tell() - self.start) / self.sink.count
            needed = estimate_bytes(self.rows_todo - self.sink.count, per_row)
            self.estimated = self.sink.fh.tell() + needed
            check_room(self.sink.path.parent, needed, self.estimated)
