"""The trainer glue in process: normalisation across gradient accumulation, packing, eval loss, TRL."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from distill_plugin.args import DistillConfig
from distill_plugin.losses import Component, KDSettings, TermOutput, online_kd_loss, select_rows
from distill_plugin.modeling import final_hidden_states, output_head
from distill_plugin.teachers import TeacherModelSource
from distill_plugin.trainer import DistillTrainerMixin


class KDTrainer(DistillTrainerMixin, Trainer):
    pass


def load_pair(tiny_pair):
    teacher_path, student_path = tiny_pair
    tok = AutoTokenizer.from_pretrained(student_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    return tok, teacher, student


def uneven_rows(n_supervised=(3, 25, 6, 30), length=32, seed=0):
    """Rows whose supervised-token counts differ a lot, so per-micro-batch normalisation would show."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in n_supervised:
        ids = torch.randint(0, 256, (length,), generator=g)  # byte tokens of the tiny tokenizer
        labels = ids.clone()
        labels[: length - n] = -100
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": labels.tolist()})
    return rows


def make_trainer(tmp_path, tok, teacher, student, data, bs, ga, config=None, **kw):
    config = config or DistillConfig(teacher="tiny", kd_weight=0.7, ce_weight=0.3, temperature=2.0)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=bs,
        per_device_eval_batch_size=kw.pop("eval_bs", 4),
        gradient_accumulation_steps=ga,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **kw,
    )
    trainer = KDTrainer(
        model=student, args=args, train_dataset=data, eval_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
    )
    config = config.model_copy(update={"chunk_size": 7})
    trainer.setup_distillation(config, TeacherModelSource(teacher, vocab_size=len(tok)))
    return trainer


def test_gradient_accumulation_does_not_change_the_step(tiny_pair, tmp_path):
    """2 micro-batches × 2 must update the weights exactly like 1 × 4 (num_items_in_batch)."""
    tok, teacher, student = load_pair(tiny_pair)
    data = uneven_rows()
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        model = copy.deepcopy(student)
        make_trainer(tmp_path / f"{bs}x{ga}", tok, teacher, model, data, bs, ga).train()
        results.append(model.lm_head.weight.detach().clone())
    moved = (results[0] - student.lm_head.weight).abs().max()
    assert moved > 1e-4, "the step did not move the weights; the test would prove nothing"
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


def packed_and_padded(tok):
    docs = uneven_rows(n_supervised=(5, 9), length=12, seed=3)
    padded = DataCollatorForSeq2Seq(tok, padding=True)(copy.deepcopy(docs))
    packed = {
        "input_ids": torch.tensor([docs[0]["input_ids"] + docs[1]["input_ids"]]),
        "labels": torch.tensor([docs[0]["labels"] + docs[1]["labels"]]),
        "position_ids": torch.tensor([list(range(12)) + list(range(12))]),
    }
    return packed, padded


def sharpen(model, std=0.3, seed=0):
    """Random init at std 0.02 barely mixes context; larger weights make attention matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model


def test_packing_matches_padding_and_needs_position_ids(tiny_pair, tmp_path):
    """Teacher and student must both get position_ids: packed documents must not attend across."""
    tok, teacher, student = load_pair(tiny_pair)
    sharpen(teacher, seed=1), sharpen(student, seed=2)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 4, 1)
    packed, padded = packed_and_padded(tok)
    loss_padded = trainer.compute_loss(student, padded)
    loss_packed = trainer.compute_loss(student, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-4, atol=1e-6)
    no_positions = {k: v for k, v in packed.items() if k != "position_ids"}
    loss_leaky = trainer.compute_loss(student, no_positions)
    assert (loss_leaky - loss_padded).abs() > 1e-3 * loss_padded.abs()


def test_eval_loss_is_normalised(tiny_pair, tmp_path):
    """Regression: eval loss was once unnormalised (1000× too large) and crashed on 0-d tensors."""
    tok, teacher, student = load_pair(tiny_pair)
    data = uneven_rows()
    config = DistillConfig(teacher="tiny", kd_weight=1.0, ce_weight=0.0, temperature=1.0)
    trainer = make_trainer(tmp_path, tok, teacher, student, data, 4, 1, config=config, eval_bs=4)
    metrics = trainer.evaluate()
    batch = DataCollatorForSeq2Seq(tok, padding=True)(copy.deepcopy(data))
    with torch.no_grad():
        rows_s, targets, mask = select_rows(final_hidden_states(student, batch), batch["labels"])
        rows_t = final_hidden_states(teacher, batch)[:, :-1][mask]
        expected = online_kd_loss(rows_s, student.lm_head.weight, rows_t, teacher.lm_head.weight, settings=KDSettings())
    assert metrics["eval_loss"] == pytest.approx(expected.loss.item(), rel=1e-4)
    assert metrics["eval_kd_loss"] == pytest.approx(expected.kd.item(), rel=1e-4)


def test_components_are_logged_and_training_changes_them(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 2, 2)
    trainer.args.max_steps = 3
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3 and all("kd_loss" in h and "ce_loss" in h for h in steps)
    # logged loss = kd_weight·T²·kd + ce_weight·ce, from the same normalised components
    for h in steps:
        assert h["loss"] == pytest.approx(0.7 * 4 * h["kd_loss"] + 0.3 * h["ce_loss"], rel=1e-3)


def test_short_last_step_of_an_epoch_is_not_doubled(tiny_pair, tmp_path):
    """3 micro-batches, accumulation 2: the epoch's second step holds one micro-batch. Its logged
    components are that step's (found by a twin: they were divided by count / accumulation = 0.5)."""
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows()[:3], 1, 2)
    trainer.args.max_steps = 2
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["loss"] == pytest.approx(0.7 * 4 * h["kd_loss"] + 0.3 * h["ce_loss"], rel=1e-5)


def test_output_head_is_found_through_peft(tiny_pair):
    from peft import LoraConfig, get_peft_model

    tok, teacher, student = load_pair(tiny_pair)
    peft_model = get_peft_model(student, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert output_head(peft_model).weight is student.lm_head.weight
    saved = get_peft_model(copy.deepcopy(student), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    head = output_head(saved)
    assert head.weight.requires_grad and head.weight is saved.base_model.model.lm_head.modules_to_save["default"].weight
    wrapped_head = get_peft_model(copy.deepcopy(student), LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="lm_head"):
        output_head(wrapped_head)


def test_trl_trainer_trains_the_tiny_pair(tiny_pair, arithmetic_data, tmp_path):
    from datasets import load_dataset
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    teacher_path, student_path = tiny_pair
    tok = AutoTokenizer.from_pretrained(student_path)
    dataset = load_dataset("json", data_files=str(arithmetic_data), split="train").select_columns(["messages"])
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", assistant_only_loss=True,
        max_length=128, lr_scheduler_type="constant",
    )
    trainer = make_trl_trainer_class()(
        model=str(student_path), args=args, train_dataset=dataset, processing_class=tok,
        teacher_model=str(teacher_path),
        distill_config={"teacher_dtype": "float32", "kd_weight": 0.5, "ce_weight": 0.5, "temperature": 2.0},
    )
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert all("kd_loss" in h for h in steps)
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"]


def test_no_silent_fallback_to_plain_ce(tiny_pair, tmp_path):
    """Regression: KD once silently fell back to CE when a hook name changed. Without a teacher
    attached, our trainer refuses to compute a loss instead of training plain SFT."""
    tok, teacher, student = load_pair(tiny_pair)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = KDTrainer(model=student, args=args, train_dataset=uneven_rows(), data_collator=DataCollatorForSeq2Seq(tok))
    batch = DataCollatorForSeq2Seq(tok, padding=True)(uneven_rows())
    with pytest.raises(RuntimeError, match="no teacher"):
        trainer.compute_loss(student, batch)


class HiddenNorm:
    """A non-logit term needing no teacher signal: Σ_i ‖h_i‖² / H over the supervised rows."""

    accepts = ()

    def __init__(self, weight, events=None):
        self.components = (Component("hidden_norm", weight),)
        self.events = events

    def __call__(self, student, signal):
        if self.events is not None:
            self.events.append("loss")
        value = student.rows.float().pow(2).sum() / student.rows.shape[1]
        return TermOutput(self.components[0].weight * value, value.detach()[None])


def test_any_term_list_is_weighted_and_logged_by_name(tiny_pair, tmp_path):
    """The trainer logs `<name>_loss` (train and eval) for every component of every term."""
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 2, 2)
    trainer.setup_distillation(trainer.distill_config, trainer.teacher_source,
                               trainer.distill_config.loss_terms() + [HiddenNorm(0.05)])
    trainer.args.max_steps = 2
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["hidden_norm_loss"] > 0
        expected = 0.7 * 4 * h["kd_loss"] + 0.3 * h["ce_loss"] + 0.05 * h["hidden_norm_loss"]
        assert h["loss"] == pytest.approx(expected, rel=1e-3)
    metrics = trainer.evaluate()
    assert {"eval_kd_loss", "eval_ce_loss", "eval_hidden_norm_loss"} <= set(metrics)
    expected = 0.7 * 4 * metrics["eval_kd_loss"] + 0.3 * metrics["eval_ce_loss"] + 0.05 * metrics["eval_hidden_norm_loss"]
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-3)
