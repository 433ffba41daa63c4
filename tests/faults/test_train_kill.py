"""Fault matrix, training × SIGKILL (TRL's ``DistillSFTTrainer``, online and served teachers): a run
killed after step 5 (checkpoint-4 on disk) resumes from its checkpoint to the same per-step losses
as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

K = 8
STEPS, KILL_AT = 8, 5
MODEL = "tiny-teacher"


def make_trainer(kind, tiny_pair, data, out, url=None, callbacks=()):
    from datasets import load_dataset
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    dataset = load_dataset("json", data_files=str(data), split="train").select_columns(["messages"])
    args = SFTConfig(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="steps", save_steps=2,
                     assistant_only_loss=True, max_length=128, lr_scheduler_type="cosine", seed=7, disable_tqdm=True)
    distill = {"kd_weight": 0.5, "ce_weight": 0.5}
    teacher = None
    if kind == "served":
        distill["teacher_server"] = {"url": url, "model": MODEL, "top_k": K}
    else:
        teacher = str(tiny_pair[0])
    return make_trl_trainer_class()(model=str(tiny_pair[1]), args=args, train_dataset=dataset, processing_class=tokenizer,
                                    teacher_model=teacher, distill_config=distill, callbacks=list(callbacks))


def losses(trainer) -> dict[int, tuple[float, float]]:
    return {h["step"]: (h["loss"], h["kd_loss"]) for h in trainer.state.log_history if "loss" in h}


def train(kind, tiny_pair, data, out, url=None, resume=None):
    trainer = make_trainer(kind, tiny_pair, data, out, url)
    trainer.train(resume_from_checkpoint=resume)
    if kind == "served":
        trainer.teacher_source.close()
    return losses(trainer)


@pytest.fixture(scope="module")
def url(tiny_pair):
    from served_teacher import serve  # tests/teachers (conftest.py); not needed by the worker

    with serve(tiny_pair[0], "--served-model-name", MODEL, "--max-logprobs", str(K)) as base:
        yield base


@pytest.mark.parametrize("kind", ["online", "served"])
def test_a_killed_run_resumes_to_the_same_losses(kind, tiny_pair, arithmetic_data, tmp_path, request):
    url = request.getfixturevalue("url") if kind == "served" else None
    whole = train(kind, tiny_pair, arithmetic_data, tmp_path / "whole", url)
    worker = Path(__file__).with_name("train_kill_worker.py")
    killed = subprocess.run([sys.executable, str(worker), kind, *map(str, tiny_pair), str(arithmetic_data),
                             str(tmp_path / "killed"), *([url] if url else [])],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"], checkpoints
    resumed = train(kind, tiny_pair, arithmetic_data, tmp_path / "killed", url,
                    resume=str(tmp_path / "killed" / "checkpoint-4"))
    assert resumed == whole and len(whole) == STEPS
