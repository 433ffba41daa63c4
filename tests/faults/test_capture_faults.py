"""Fault matrix, capture row (``distill-data logits`` / ``offline.capture``): SIGKILL at two points
resumes to the same store; a bad input line stops in one line (exit 2) with the store untouched.
(A corrupt part: ``tests/offline/test_checksums.py``; a full disk: ``tests/offline/test_disk_full.py``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap
from distill_plugin.offline.checksums import verify_store
from distill_plugin.offline.store import TopKStore

K = 8
ROWS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i % 5}?"},
                                     {"role": "assistant", "content": f"{i} plus {i % 5} is {i + i % 5}."}]}
        for i in range(10)]

# Captures ROWS two rows per batch and per part; the scoring backend SIGKILLs its own process when
# called the KILL_AT-th time: before any part is written (1), or with two parts complete (3).
KILLED_CAPTURE = """
import os, signal, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap

teacher_dir, data, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
backend, calls = HFBackend(teacher, chunk_positions=16), []
real = backend.prompt_topk

def prompt_topk(*args, **kwargs):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

backend.prompt_topk = prompt_topk
meta = cap.make_meta("tiny-teacher", tokenizer, 8, 1.0, 96, teacher.config.vocab_size)
cap.capture(cap.examples_from_jsonl(data, tokenizer, 96), backend, out, meta, batch_size=2, rows_per_part=2, progress=False)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def setup(tiny_pair, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
    meta = cap.make_meta("tiny-teacher", tokenizer, K, 1.0, 96, teacher.config.vocab_size)
    return teacher, tokenizer, meta, cap.examples_from_jsonl(data, tokenizer, 96)


def run_capture(setup, out):
    teacher, _, meta, examples = setup
    return cap.capture(examples, HFBackend(teacher, chunk_positions=16), out, meta, batch_size=2, rows_per_part=2,
                       progress=False)


@pytest.mark.parametrize("kill_at,parts_before", [(1, 0), (3, 2)])
def test_sigkill_during_capture_resumes_to_the_same_store(tiny_pair, data, setup, tmp_path, kill_at, parts_before):
    run_capture(setup, tmp_path / "reference")
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", KILLED_CAPTURE, str(tiny_pair[0]), str(data), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.glob("part-*.parquet"))) == parts_before
    resumed = run_capture(setup, out)
    assert resumed.skipped == 2 * parts_before and resumed.rows == len(ROWS) - 2 * parts_before
    assert len(verify_store(out).verified) == len(list(out.glob("part-*.parquet")))
    ours, theirs = TopKStore(out), TopKStore(tmp_path / "reference")
    assert sorted(ours.keys()) == sorted(theirs.keys()) and len(ours) == len(ROWS)
    for key in theirs.keys():
        np.testing.assert_array_equal(ours.get(key).ids, theirs.get(key).ids)
        np.testing.assert_array_equal(ours.get(key).logprobs, theirs.get(key).logprobs)


def test_a_bad_input_line_stops_capture_in_one_line(tiny_pair, data, setup, tmp_path):
    run_capture(setup, tmp_path / "store")
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()}
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + ['{"messages": [}'] + lines[3:]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "data_prep.cli", "logits", str(bad), "--teacher", str(tiny_pair[0]),
                           "-o", str(tmp_path / "store"), "--top-k", str(K), "--sequence-len", "96"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{bad}:4" in errors[0], errors
    assert {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()} == before  # nothing written lost
