"""verify, filter and export hold a chunk of rows, not the file: the Python memory they allocate
(tracemalloc peak) stays a small fraction of a 20 MB input. Peak RSS on >= 1 GB is measured by
benchmarks/bench_data_memory.py (figures in README)."""

import json
import tracemalloc

import pytest

from data_prep.export import ExportConfig, export
from data_prep.filters import FilterConfig, filter_rows
from data_prep.verify import VerifyConfig, verify


def _big_file(path, rows=2000, reasoning_chars=10_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(rows):
            reasoning = f"row {i} " + "x" * reasoning_chars
            gen = {"text": f"<think>\n{reasoning}\n</think>\n\n\\boxed{{A}}", "reasoning": reasoning,
                   "content": "\\boxed{A}", "think_closed": True, "finish_reason": "stop",
                   "prompt_tokens": 5, "completion_tokens": 9, "correct": True, "verdict": "correct"}
            fh.write(json.dumps({"id": f"r{i}", "prompt": f"Question number {i} about item {i * 7919}",
                                 "answer": "A", "generations": [gen]}) + "\n")
    return path


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _run(stage, src, out):
    if stage == "verify":
        return verify(src, out / "ver", VerifyConfig(task="mcq", workers=1, chunk_rows=32))
    if stage == "filter":
        return filter_rows(src, out / "kept", FilterConfig(near_dup_threshold=None))
    return export(src, out / "train.jsonl", ExportConfig())


@pytest.mark.parametrize("stage", ["verify", "filter", "export"])
def test_stage_memory_is_a_chunk_not_the_file(tmp_path, stage):
    _run(stage, _big_file(tmp_path / "warm" / "rows.jsonl", rows=20), tmp_path / "warm")  # imports
    src = _big_file(tmp_path / "in" / "rows.jsonl")
    size = src.stat().st_size
    peak = _peak(lambda: _run(stage, src, tmp_path))
    assert peak < size / 4, f"{stage}: peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    out = {"verify": tmp_path / "ver" / "verified.jsonl", "filter": tmp_path / "kept" / "kept.jsonl",
           "export": tmp_path / "train.jsonl"}[stage]
    assert sum(1 for _ in open(out)) == 2000
