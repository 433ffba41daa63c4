"""Hidden-state KD in the trainer: normalisation under gradient accumulation, the projectors'
param group, logging (train and eval), and projectors saved apart from the student and restored
on resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, TrainingArguments

from distill_plugin.args import DistillConfig
from distill_plugin.hidden.projector import PROJECTOR_FILE
from distill_plugin.teachers import TeacherModelSource
from distill_plugin.testing.tiny import build_model, build_tokenizer

from test_trainer import KDTrainer, uneven_rows

CONFIG = DistillConfig(
    teacher="tiny", kd_weight=0.5, ce_weight=0.5, temperature=2.0, chunk_size=7,
    hidden_weight=2.0, hidden_loss="mse", hidden_layers="uniform:2", hidden_projector_lr=0.5,
)


@pytest.fixture(scope="module")
def deep_pair():
    """Teacher 4 layers × 48 wide, student 2 layers × 32 wide: deeper and wider, as in the issue."""
    tok = build_tokenizer()
    teacher = build_model(None, tok, hidden_size=48, num_layers=4, seed=1).eval().requires_grad_(False)
    return tok, teacher, build_model(None, tok, hidden_size=32, num_layers=2, seed=2)


def trainer_for(out, pair, student, bs=4, ga=1, config=CONFIG, **kw):
    tok, teacher, _ = pair
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=bs, per_device_eval_batch_size=4,
        gradient_accumulation_steps=ga, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
        report_to=[], use_cpu=True, logging_steps=1, seed=0, **{"max_steps": 1, "save_strategy": "no", **kw},
    )
    data = uneven_rows()
    trainer = KDTrainer(model=student, args=args, train_dataset=data, eval_dataset=data,
                        data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    trainer.setup_distillation(config, TeacherModelSource(teacher, vocab_size=len(tok)))
    return trainer


def projector_weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.distill_modules.parameters()])


def test_gradient_accumulation_does_not_change_the_step(deep_pair, tmp_path):
    """2 × 2 updates the student and the projectors exactly like 1 × 4 (hidden loss divided by N)."""
    students, projectors = [], []
    for bs, ga in ((4, 1), (2, 2)):
        student = copy.deepcopy(deep_pair[2])
        trainer = trainer_for(tmp_path / f"{bs}x{ga}", deep_pair, student, bs, ga)
        before = projector_weights(trainer)
        trainer.train()
        students.append(student.model.layers[0].mlp.up_proj.weight.detach().clone())
        projectors.append(projector_weights(trainer))
    assert (projectors[0] - before).abs().max() > 1e-4, "the projectors did not move"
    assert (students[0] - deep_pair[2].model.layers[0].mlp.up_proj.weight).abs().max() > 1e-5
    torch.testing.assert_close(students[0], students[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(projectors[0], projectors[1], rtol=1e-4, atol=1e-6)


def test_projectors_get_their_own_param_group_and_the_loss_is_logged(deep_pair, tmp_path):
    trainer = trainer_for(tmp_path, deep_pair, copy.deepcopy(deep_pair[2]))
    assert [p.shape for p in trainer.distill_modules.parameters()] == [(48, 32), (48,)] * 2  # uniform:2 → 2 pairs
    trainer.train()
    groups = trainer.optimizer.param_groups
    mine = [g for g in groups if any(p is q for p in g["params"] for q in trainer.distill_modules.parameters())]
    assert len(mine) == 1 and mine[0]["lr"] == 0.5 and len(mine[0]["params"]) == 4
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert train_logs and all(e["hidden_loss"] > 0 for e in train_logs)
    metrics = trainer.evaluate()
    assert {"eval_kd_loss", "eval_ce_loss", "eval_hidden_loss"} <= set(metrics) and metrics["eval_hidden_loss"] > 0
    # the logged value is the per-token mean: the loss is Σ weight·component
    entry = train_logs[0]
    expected = CONFIG.kd_settings().kd_scale * entry["kd_loss"] + 0.5 * entry["ce_loss"] + 2.0 * entry["hidden_loss"]
    assert entry["loss"] == pytest.approx(expected, rel=1e-3)


def test_checkpoints_hold_the_student_only_and_resume_restores_the_projectors(deep_pair, tmp_path):
    common = dict(bs=2, max_steps=4, save_strategy="steps", save_steps=2)
    full = trainer_for(tmp_path / "full", deep_pair, copy.deepcopy(deep_pair[2]), **common)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        assert not any("maps" in key or "projector" in key for key in f.keys())
    loaded, info = AutoModelForCausalLM.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    with safe_open(str(checkpoint / PROJECTOR_FILE), "pt") as f:
        assert sorted(f.keys()) == ["0.maps.0.bias", "0.maps.0.weight", "0.maps.1.bias", "0.maps.1.weight"]
    assert (tmp_path / "full" / PROJECTOR_FILE).exists()  # the final save, beside output_dir's weights

    resumed = trainer_for(tmp_path / "resumed", deep_pair, copy.deepcopy(deep_pair[2]), **common)
    untrained = projector_weights(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    losses = lambda t, after=0: [v for e in t.state.log_history if "loss" in e and e["step"] > after for v in (e["loss"], e["hidden_loss"])]
    tail = losses(full, after=2)
    assert len(tail) == 4 and losses(resumed, after=2) == pytest.approx(tail, rel=1e-5)
    assert (projector_weights(resumed) - untrained).abs().max() > 1e-4

    # Resuming without the projector file is an error, not a silent restart of the projectors.
    (checkpoint / PROJECTOR_FILE).unlink()
    again = trainer_for(tmp_path / "again", deep_pair, copy.deepcopy(deep_pair[2]), **common)
    with pytest.raises(FileNotFoundError, match=PROJECTOR_FILE):
        again.train(resume_from_checkpoint=str(checkpoint))
    assert json.loads((checkpoint / "config.json").read_text())["hidden_size"] == 32
