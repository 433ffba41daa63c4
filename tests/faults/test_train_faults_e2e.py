"""Fault matrix, training, through ``axolotl.cli.train`` (the user's view: exit code, one line, no
traceback), on the twin of recipes/logit_kd_qwen2_1p5b.yml. The mechanisms are the ones every
teacher source shares (the plugin's pre-data hook, the trainer mixin's checkpoint save and resume);
the per-source cases run in process (``test_train_corrupt_input.py``, ``test_train_disk_full.py``).

* corrupt input: a dataset line that is not JSON stops the run before the data loads, naming
  ``file:line``; a truncated ``optimizer.pt`` given to ``resume_from_checkpoint`` is named;
* full disk: a filesystem with room for one checkpoint, not two: the second save stops the run in
  one line, the torn checkpoint is removed, and with space freed ``auto_resume_from_checkpoints``
  resumes from the first to the uninterrupted run's losses.

One test (one uninterrupted run serves as the reference and as the checkpoint to damage): each
``axolotl.cli.train`` run costs most of a minute on a shared CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from axolotl_runs import SUBPROCESS_ENV, learning, run_axolotl_train, twin_of
from small_fs import fill, small_filesystem

pytestmark = pytest.mark.slow


def recipe(tmp_path, tiny_pair, data, name, out=None, **overrides):
    teacher, student = tiny_pair
    return twin_of("logit_kd_qwen2_1p5b.yml", tmp_path / f"{name}.yml", student, data, teacher=teacher,
                   output_dir=str(out or tmp_path / name), dataset_prepared_path=str(tmp_path / "prepared"),
                   **learning(max_steps=4, save_steps=2, **overrides))


def stopped(path, cwd) -> str:
    """Run ``axolotl.cli.train`` expecting exit 2 with one ``distill_plugin: error:`` line; return it."""
    proc = subprocess.run([sys.executable, "-m", "axolotl.cli.train", str(path)], cwd=cwd, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.startswith("distill_plugin: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in output, output[-4000:]
    return lines[0]


def test_axolotl_stops_in_one_line_on_bad_data_a_full_disk_and_a_damaged_checkpoint(tmp_path, tiny_pair,
                                                                                     arithmetic_data):
    lines = arithmetic_data.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:2] + ['{"messages": [}\n'] + lines[2:]))
    line = stopped(recipe(tmp_path, tiny_pair, bad, "bad"), tmp_path)
    assert f"datasets[0].path: {bad}:3: malformed JSON (" in line, line

    whole_dir = tmp_path / "whole"
    _, whole = run_axolotl_train(recipe(tmp_path, tiny_pair, arithmetic_data, "whole"), cwd=tmp_path)
    checkpoint = sum(f.stat().st_size for f in (whole_dir / "checkpoint-2").rglob("*") if f.is_file())
    with small_filesystem(16 * 1024) as fs:
        out, filler = fs / "run", fs / "filler"
        fill(filler, leave=int(1.5 * checkpoint))  # room for checkpoint-2, not for checkpoint-4 beside it
        line = stopped(recipe(tmp_path, tiny_pair, arithmetic_data, "full", out=out), tmp_path)
        assert f"{out}: no space left on device while saving checkpoint-4; the incomplete checkpoint-4 was " \
               "removed (" in line, line
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
        filler.unlink()
        _, resumed = run_axolotl_train(recipe(tmp_path, tiny_pair, arithmetic_data, "again", out=out,
                                              auto_resume_from_checkpoints=True), cwd=tmp_path)
    assert len(whole) == 4 and resumed == whole[2:], (whole, resumed)

    optimizer = whole_dir / "checkpoint-4" / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size // 2)
    line = stopped(recipe(tmp_path, tiny_pair, arithmetic_data, "resume", out=whole_dir,
                          resume_from_checkpoint=str(optimizer.parent)), tmp_path)
    assert f"resume_from_checkpoint: {optimizer}: truncated torch file (" in line, line
