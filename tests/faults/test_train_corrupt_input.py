"""Fault matrix, training × corrupt input, in process (the end-to-end ``axolotl.cli.train`` runs:
``test_train_corrupt_e2e.py``).

* A damaged checkpoint given to ``resume_from_checkpoint`` (the trainer mixin's ``train``, shared by
  every teacher source): a truncated file, an overwritten header or a torch file whose CRC-32 does
  not match is named before anything loads; a whole file that is not what was saved, when the
  Trainer loads it; one line, exit 2.
* A dataset line that is not JSON: the plugin's pre-data hook names ``file:line`` (exit 2) for the
  online, hidden-state and on-policy recipes, before Axolotl tokenises anything.
* A served teacher's malformed answers (a body cut short, half the positions) on loopback: one is
  asked again and the run's losses are an undisturbed run's; answers that stay malformed save the
  last step and stop with one line naming the URL, and resuming against a sound server reproduces
  the undisturbed run.
"""

from __future__ import annotations

import os
import shutil

import pytest
from transformers import TrainerCallback

from axolotl_runs import preflight, twin_of
from served_teacher import faults, set_faults
from train_runs import STEPS, train


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill_plugin: error:")]


@pytest.fixture(scope="module")
def checkpoint(tiny_pair, arithmetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    train("online", tiny_pair, arithmetic_data, out)
    return out / "checkpoint-4"


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def overwrite_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 256] = bytes(256)
    path.write_bytes(bytes(data))


def another_object(path):
    import torch

    torch.save("not an RNG state", path)


@pytest.mark.parametrize("name,damage,named", [
    ("model.safetensors", truncate, "model.safetensors: truncated safetensors file"),
    ("optimizer.pt", truncate, "optimizer.pt: truncated torch file"),
    ("trainer_state.json", truncate, "trainer_state.json: not valid JSON"),
    ("optimizer.pt", overwrite_middle, "optimizer.pt: damaged torch file (member "),  # its CRC-32
    ("rng_state.pth", another_object, "checkpoint-4: cannot be loaded (TypeError: "),  # whole, but not what was saved
])
def test_a_damaged_checkpoint_stops_the_resume_in_one_line(name, damage, named, checkpoint, tiny_pair, arithmetic_data,
                                                          tmp_path, capsys):
    copy = shutil.copytree(checkpoint, tmp_path / "run" / "checkpoint-4")
    damage(copy / name)
    with pytest.raises(SystemExit) as stopped:
        train("online", tiny_pair, arithmetic_data, tmp_path / "run", resume=str(copy))
    lines = error_lines(capsys)
    assert stopped.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("distill_plugin: error: resume_from_checkpoint: ") and named in lines[0], lines
    assert "resume from an earlier checkpoint-N" in lines[0]


@pytest.mark.parametrize("recipe", ["logit_kd_qwen2_1p5b.yml", "hidden_state_kd.yml", "gkd_on_policy.yml"])
def test_a_bad_dataset_line_is_named_before_the_data_loads(recipe, tiny_pair, arithmetic_data, tmp_path, capsys):
    teacher, student = tiny_pair
    lines = arithmetic_data.read_text().splitlines(keepends=True)
    bad = tmp_path / "train.jsonl"
    bad.write_text("".join(lines[:2] + ['{"messages": [{"role": "user", "content": "1 + 1"}\n'] + lines[2:]))
    path = twin_of(recipe, tmp_path / "recipe.yml", student, bad, teacher=teacher, output_dir=str(tmp_path / "out"),
                   dataset_prepared_path=str(tmp_path / "prepared"))
    line = preflight(path, capsys)
    assert line is not None and f"datasets[0].path: {bad}:3: malformed JSON (" in line, line


class Garble(TrainerCallback):
    """From the end of step ``at``, the server's answers are malformed (``how``: garble or cut)."""

    def __init__(self, url, at: int, how: str, count: int):
        self.url, self.at, self.how, self.count = url, at, how, count

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            set_faults(self.url, **{self.how: list(range(1, self.count + 1))})


@pytest.mark.parametrize("how", ["garble", "cut"])
def test_malformed_answers_are_asked_again_then_stop_in_one_line(how, tiny_pair, arithmetic_data, teacher_url, tmp_path,
                                                                capsys):
    set_faults(teacher_url)
    whole = train("served", tiny_pair, arithmetic_data, tmp_path / "whole", teacher_url)
    set_faults(teacher_url, **{how: [3]})  # one malformed answer (after the start-up probe's requests): asked again
    ridden = train("served", tiny_pair, arithmetic_data, tmp_path / "ridden", teacher_url)
    assert ridden == whole and faults(teacher_url)["garbled" if how == "garble" else "was_cut"] == 1

    set_faults(teacher_url)
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit) as stopped:
        train("served", tiny_pair, arithmetic_data, out, teacher_url, callbacks=[Garble(teacher_url, 3, how, 10_000)])
    lines = error_lines(capsys)
    assert stopped.value.code == 2 and len(lines) == 1, lines
    assert f"distill.teacher_server: {teacher_url}/completions: a malformed answer 3 times in a row (last: " in lines[0]
    saved = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert int(saved.name.split("-")[1]) >= 3 and f"resume_from_checkpoint: {saved}`" in lines[0], lines

    set_faults(teacher_url)
    resumed = train("served", tiny_pair, arithmetic_data, out, teacher_url, resume=str(saved))
    assert len(whole) == STEPS and resumed == whole
