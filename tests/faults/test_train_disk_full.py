"""Fault matrix, training × full disk: the checkpoint save every teacher source shares (the trainer
mixin's ``_save_checkpoint``, ``distill_plugin.checkpoints.save_or_stop``), into a small real
filesystem (a tmpfs mounted for the test; skipped where mounting is not permitted). The disk fills
up after checkpoint-2: the save of checkpoint-4 stops the run with one line naming the output
directory, its free space and the checkpoint to resume from (exit 2); the torn checkpoint-4 is
removed, so ``resume_from_checkpoint: true`` picks checkpoint-2, and the resumed run's per-step
losses are the uninterrupted run's."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from small_fs import fill, small_filesystem
from train_runs import STEPS, train


class FillAfterSave(TrainerCallback):
    """Another writer takes the filesystem's space (all but ``leave`` bytes) once step ``at`` is saved."""

    def __init__(self, filler, at: int, leave: int):
        self.filler, self.at, self.leave = filler, at, leave

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            fill(self.filler, leave=self.leave)


def test_a_full_disk_at_a_checkpoint_stops_in_one_line_and_resumes_from_the_last_one(tiny_pair, arithmetic_data,
                                                                                    tmp_path, capsys):
    whole = train("online", tiny_pair, arithmetic_data, tmp_path / "whole")
    with small_filesystem(2048) as fs:
        out = fs / "run"
        # room for the checkpoint's weights (~150 kB), not for its optimizer state (~300 kB): a torn checkpoint-4
        with pytest.raises(SystemExit) as stopped:
            train("online", tiny_pair, arithmetic_data, out, callbacks=[FillAfterSave(fs / "filler", 2, 200_000)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill_plugin: error:")]
        assert stopped.value.code == 2 and len(lines) == 1, lines
        assert f"{out}: no space left on device while saving checkpoint-4; the incomplete checkpoint-4 was " \
               "removed (" in lines[0]
        assert f"resume from {out / 'checkpoint-2'} (`resume_from_checkpoint: {out / 'checkpoint-2'}`)" in lines[0]
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]

        (fs / "filler").unlink()
        resumed = train("online", tiny_pair, arithmetic_data, out, resume=True)  # the highest checkpoint-N
    assert len(whole) == STEPS and resumed == whole
