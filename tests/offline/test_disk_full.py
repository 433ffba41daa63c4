"""A full disk during capture, on a real small filesystem (a tmpfs mounted for the test; skipped where
mounting is not permitted): refused before writing when the estimated store does not fit, one line
and exit 2 from ``distill-data logits``; a disk that fills while writing stops with one line, the part
being written removed; freeing space and running again completes the store."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap
from distill_plugin.offline.checksums import verify_store
from distill_plugin.offline.diskspace import DiskFullError
from distill_plugin.offline.store import TopKStore
from small_fs import fill, small_filesystem

K = 8


@pytest.fixture(scope="module")
def examples(chat_jsonl, tokenizer):
    return cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)


class FillsTheDisk:
    """The real scoring backend; on its ``at``-th call another writer fills the store's filesystem."""

    def __init__(self, teacher, filler: Path, at: int):
        self.backend, self.filler, self.at, self.calls = HFBackend(teacher, chunk_positions=16), filler, at, 0

    def prompt_topk(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            fill(self.filler)
        return self.backend.prompt_topk(*args, **kwargs)


def test_disk_filling_mid_capture_stops_in_one_line_and_resumes(tmp_path, teacher, tokenizer, examples):
    meta = cap.make_meta("tiny-teacher", tokenizer, K, 1.0, 96, teacher.config.vocab_size)
    reference = tmp_path / "reference"
    cap.capture(examples, HFBackend(teacher, chunk_positions=16), reference, meta, batch_size=2, rows_per_part=2,
                progress=False)
    with small_filesystem(512) as fs:
        store, filler = fs / "store", fs / "filler"
        backend = FillsTheDisk(teacher, filler, at=2)
        with pytest.raises(DiskFullError) as err:
            cap.capture(examples, backend, store, meta, batch_size=2, rows_per_part=2, progress=False)
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"{store}: no space left on device (")
        assert " free; the output is estimated at " in line and "run the same command again to resume" in line
        assert not list(store.glob("*.tmp")), list(store.iterdir())  # the part being written is removed
        kept = sorted(p.name for p in store.glob("part-*.parquet"))
        assert kept == ["part-s000of001-000000.parquet"] and verify_store(store).verified == kept

        filler.unlink()  # space freed: the same capture resumes after the kept part
        resumed = cap.capture(examples, HFBackend(teacher, chunk_positions=16), store, meta, batch_size=2,
                              rows_per_part=2, progress=False)
        assert resumed.skipped == 2 and resumed.rows == len(examples) - 2
        assert len(verify_store(store).verified) == len(list(reference.glob("part-*.parquet")))
        ours, theirs = TopKStore(store), TopKStore(reference)
        assert set(ours.keys()) == set(theirs.keys())
        for key in theirs.keys():
            np.testing.assert_array_equal(ours.get(key).ids, theirs.get(key).ids)
            np.testing.assert_array_equal(ours.get(key).logprobs, theirs.get(key).logprobs)
        # the estimate made before writing is of the right size (within a factor 2 of the store)
        written = sum(p.stat().st_size for p in reference.glob("part-*.parquet"))
        estimated = cap.check_capture_room(tmp_path / "empty", meta, examples, HFBackend(teacher, chunk_positions=16)
                                           .prompt_topk([e.input_ids for e in examples[:2]], [e.mask for e in examples[:2]],
                                                        K, 1.0, vocab_size=meta.vocab_size), rows_per_part=2)
        assert written / 2 < estimated < written * 2, (estimated, written)


def test_cli_refuses_a_store_that_will_not_fit_then_completes(teacher_dir, chat_jsonl, examples):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with small_filesystem(64) as fs:
        filler = fs / "filler"
        fill(filler, leave=12 * 1024)  # ~12 kB left; the store of these rows takes ~16 kB
        cmd = [sys.executable, "-m", "data_prep.cli", "logits", str(chat_jsonl), "--teacher", str(teacher_dir),
               "-o", str(fs / "store"), "--top-k", str(K), "--sequence-len", "96"]
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert lines[0].startswith(f"error: {fs / 'store'}: ") and " kB free, but this run's output is estimated at " in lines[0]
        assert not list((fs / "store").glob("part-*")), list((fs / "store").iterdir())
        filler.unlink()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"captured {len(examples)} rows" in done.stdout
        assert len(TopKStore(fs / "store")) == len(examples)
