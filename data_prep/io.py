"""data_prep's file helpers: input discovery and stable ids.

JSONL reading/writing and the shard rule are the library's (``distill_plugin.jsonl``,
``distill_plugin.shards``); they are re-exported here so the stages import them from one place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from distill_plugin.jsonl import (InputError, JsonlAppender, SkipLog, done_ids, read_jsonl, read_rows,
                                  repair_torn_tail, write_jsonl_atomic)
from distill_plugin.shards import parse_shard, shard_of

__all__ = ["InputError", "JsonlAppender", "SkipLog", "done_ids", "input_files", "parse_shard", "read_jsonl",
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
