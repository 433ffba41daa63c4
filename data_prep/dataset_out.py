"""A training set on disk: a stable train/eval split by prompt id, JSONL or Parquet shards of a
given size, named so ``datasets.load_dataset`` and Axolotl's ``datasets:`` block read them.

Split: a prompt goes to ``eval`` when ``u(id) < eval_fraction``, where ``u(id)`` is the first 8
bytes of sha256(``"split:" + id``) read as a number in [0, 1). It depends on the prompt's id only:
the same prompt lands in the same split on every run and whatever else the file holds, every
training row of a prompt (``--select all``: ``ID#k``) lands with it, and raising the fraction only
moves prompts from train to eval. The eval share is ``eval_fraction`` in expectation, not exactly.

Shards: ``<dir>/<split>-<i>-of-<n>.<ext>`` (``i`` 0-based, 5 digits). A shard is closed once it
holds ``shard_bytes`` (JSONL: after the row that reaches it; Parquet: after the row group that
reaches it, zstd-compressed row groups of up to a quarter of the shard size in JSON bytes), so
every shard but a split's last is at least that size. Shards are written under hidden temporary
names and renamed at the end; shards of an earlier export in the folder that this one did not
write are removed, so the folder holds exactly this export.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .io import InputError

SPLITS = ("train", "eval")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_SHARD_NAME = re.compile(r"^(train|eval)-\d{5}-of-\d{5}\.(jsonl|parquet)$")


def split_of(prompt_id: str, eval_fraction: float) -> str:
    """``"eval"`` or ``"train"`` for a prompt id (see the module docstring)."""
    u = int.from_bytes(hashlib.sha256(f"split:{prompt_id}".encode()).digest()[:8], "big") / 2 ** 64
    return "eval" if u < eval_fraction else "train"


def parse_size(spec: str | int | None) -> int | None:
    """``"200MB"``, ``"1.5G"``, ``"64KiB"``, ``4096`` -> bytes (powers of 1024)."""
    if spec is None or isinstance(spec, int):
        return spec
    m = _SIZE.match(str(spec))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"shard_size: expected a size such as 200MB, 1GB or 65536, got {spec!r}")
    return max(1, int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")))


def parquet_schema(reasoning_field: bool):
    """The training row's columns: ``messages`` (role, content[, reasoning_content]), ``id``, ``source``."""
    import pyarrow as pa

    fields = [("role", pa.string()), ("content", pa.string())]
    if reasoning_field:
        fields.append(("reasoning_content", pa.string()))
    return pa.schema([("messages", pa.list_(pa.struct(fields))), ("id", pa.string()), ("source", pa.string())])


class ShardWriter:
    """Rows of one split into size-bounded shards (see the module docstring)."""

    def __init__(self, out_dir: Path, split: str, fmt: str, shard_bytes: int | None, schema=None):
        self.out_dir, self.split, self.fmt, self.schema = out_dir, split, fmt, schema
        self.shard_bytes = shard_bytes
        self.group_bytes = max(1, min(shard_bytes or 64 << 20, 64 << 20) // 4)
        self.paths: list[Path] = []
        self.rows = 0
        self.fh = self.pq = None
        self.buffer, self.buffered = [], 0

    def _open(self) -> None:
        path = self.out_dir / f".{self.split}-{len(self.paths):05d}.{self.fmt}.tmp"
        self.paths.append(path)
        self.fh = open(path, "wb")
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self.pq = pq.ParquetWriter(self.fh, self.schema, compression="zstd")

    def write(self, row: dict) -> None:
        if self.fh is None:
            self._open()
        self.rows += 1
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        if self.fmt == "jsonl":
            self.fh.write(line)
        else:
            self.buffer.append(row)
            self.buffered += len(line)
            if self.buffered < self.group_bytes:
                return
            self._flush_group()
        if self.shard_bytes and self.fh.tell() >= self.shard_bytes:
            self._close()

    def _flush_group(self) -> None:
        import pyarrow as pa

        if self.buffer:
            self.pq.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.fh.flush()
        self.buffer, self.buffered = [], 0

    def _close(self) -> None:
        if self.pq is not None:
            self._flush_group()
            self.pq.close()
            self.pq = None
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            self.fh = None

    def finish(self) -> list[Path]:
        """Close the last shard; rename every shard to ``<split>-<i>-of-<n>.<ext>``."""
        self._close()
        n = len(self.paths)
        final = [self.out_dir / f"{self.split}-{i:05d}-of-{n:05d}.{self.fmt}" for i in range(n)]
        for tmp, path in zip(self.paths, final):
            os.replace(tmp, path)
        return final

    def abort(self) -> None:
        try:
            self._close()
        finally:
            for p in self.paths:
                p.unlink(missing_ok=True)


def remove_stale_shards(out_dir: Path, keep: list[Path]) -> list[str]:
    """Shards in ``out_dir`` left by an earlier export (named like ours, not written now)."""
    keep_names = {p.name for p in keep}
    stale = [p for p in out_dir.iterdir() if _SHARD_NAME.match(p.name) and p.name not in keep_names]
    for p in stale:
        p.unlink()
    return [p.name for p in stale]


def check_folder_output(out: Path) -> None:
    if out.suffix in (".jsonl", ".parquet", ".json"):
        raise InputError(f"{out}: with --split, --shard-size or --format parquet the output is a folder "
                         f"of shards; give a folder (e.g. {out.with_suffix('')})")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")


class LengthTable:
    """Token lengths of each split's training rows with the student's tokenizer: the whole
    conversation as its chat template renders it (what the student trains on)."""

    def __init__(self, tokenizer: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        self.name = tokenizer
        self.lengths: dict[str, list[int]] = {s: [] for s in SPLITS}

    def add(self, split: str, row: dict) -> None:
        if self.tok.chat_template:
            text = self.tok.apply_chat_template(row["messages"], tokenize=False)
        else:
            text = "\n".join(m["content"] for m in row["messages"])
        self.lengths[split].append(len(self.tok(text, add_special_tokens=False)["input_ids"]))

    def as_dict(self) -> dict:
        from .report import length_summary

        return {s: length_summary(v) for s, v in self.lengths.items() if v}

    def markdown(self) -> str:
        lines = [f"token lengths ({self.name}):", "| split | rows | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s} | {d['count']} | {d['p50']} | {d['p95']} | {d['max']} |" for s, d in self.as_dict().items()]
        return "\n".join(lines)
