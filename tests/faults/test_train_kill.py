"""Fault matrix, training × SIGKILL, one run per teacher source (``train_runs.KINDS``): a run killed
after step 5 (checkpoint-4 on disk, step 5 lost) resumes from its checkpoint to the same per-step
losses, every logged component, as an uninterrupted run. On-policy: the resumed steps sample the
same completions (the checkpoint's RNG state is restored before the first resumed step samples);
hidden: the projectors come back with the student; stored: the offline collator's batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from train_runs import KINDS, STEPS, train

KILL_AT = 5


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_run_resumes_to_the_same_losses(kind, tiny_pair, arithmetic_data, tmp_path, source_extra):
    extra = source_extra(kind)
    whole = train(kind, tiny_pair, arithmetic_data, tmp_path / "whole", extra)
    worker = Path(__file__).with_name("train_kill_worker.py")
    killed = subprocess.run([sys.executable, str(worker), kind, *map(str, tiny_pair), str(arithmetic_data),
                             str(tmp_path / "killed"), str(KILL_AT), *([str(extra)] if extra else [])],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"], checkpoints
    resumed = train(kind, tiny_pair, arithmetic_data, tmp_path / "killed", extra,
                    resume=str(tmp_path / "killed" / "checkpoint-4"))
    assert len(whole) == STEPS and all(v > 0 for step in whole.values() for v in step.values())
    assert resumed == whole
