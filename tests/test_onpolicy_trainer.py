"""On-policy distillation (GKD) through the trainer, in process on the tiny pair."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from distill_plugin.args import DistillConfig
from distill_plugin.demo.task import make_split
from distill_plugin.generation import SamplingParams
from distill_plugin.generation.rollout import Rollout
from distill_plugin.onpolicy.schedule import StepSchedule
from distill_plugin.onpolicy.steps import OnPolicySteps, stop_ids
from distill_plugin.teachers import TeacherModelSource
from distill_plugin.trainer import DistillTrainerMixin
from test_trainer import load_pair, sharpen

GKD = dict(teacher="tiny", divergence="jsd", beta=0.5)
SAMPLING = dict(max_new_tokens=12)


class Recorder(DistillTrainerMixin, Trainer):
    """Keeps what compute_loss was given (the batches after on-policy replacement)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((self.state.global_step, {k: v.clone() for k, v in inputs.items()}, num_items_in_batch))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def chat_rows(tok, n=8, seed=0):
    """The arithmetic chats tokenised with the chat template; labels on the assistant turn only."""
    rows = []
    for example in make_split(n, seed=seed):
        enc = tok.apply_chat_template(example["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, keep = enc["input_ids"], enc["assistant_masks"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [t if k else -100 for t, k in zip(ids, keep)]})
    return rows


def make_trainer(out, tok, teacher, student, config: DistillConfig, data, bs=2, ga=2, steps=2, **kw):
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=steps,
        learning_rate=kw.pop("lr", 1.0), optim=kw.pop("optim", "sgd"), lr_scheduler_type="constant", report_to=[],
        use_cpu=True, logging_steps=1, save_strategy=kw.pop("save_strategy", "no"), seed=0, **kw,
    )
    trainer = Recorder(model=student, args=args, train_dataset=data, processing_class=tok,
                       data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    trainer.seen = []
    trainer.setup_distillation(config, TeacherModelSource(teacher, vocab_size=len(tok)))
    return trainer


def train_logs(trainer, **kw):
    trainer.train(**kw)
    return [h for h in trainer.state.log_history if "loss" in h]


def test_lambda_zero_is_the_off_policy_objective(tiny_pair, tmp_path):
    """With the on-policy machinery attached and λ = 0 the weights move exactly as without it."""
    tok, teacher, student = load_pair(tiny_pair)
    data, config = chat_rows(tok), DistillConfig(**GKD)  # no on_policy_fraction: nothing sampled
    plain = make_trainer(tmp_path / "plain", tok, teacher, copy.deepcopy(student), config, data)
    assert plain.on_policy is None
    plain_logs = train_logs(plain)
    hooked = make_trainer(tmp_path / "hooked", tok, teacher, copy.deepcopy(student), config, data)
    rollout = Rollout(tok, SamplingParams(n=1, max_tokens=12))
    hooked.on_policy = OnPolicySteps(StepSchedule(0.0, seed=0), rollout, tok, stop_ids(tok, student))
    hooked_logs = train_logs(hooked)
    moved = (plain.model.lm_head.weight - student.lm_head.weight).abs().max()
    assert moved > 1e-4, "the steps did not move the weights; the comparison would prove nothing"
    assert torch.equal(plain.model.lm_head.weight, hooked.model.lm_head.weight)
    assert [h["loss"] for h in plain_logs] == [h["loss"] for h in hooked_logs]
    assert [h["on_policy"] for h in hooked_logs] == [0.0, 0.0] and "generated_length" not in hooked_logs[0]
    for (_, a, na), (_, b, nb) in zip(plain.seen, hooked.seen):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(na, nb)


def data_answers(rows) -> set[tuple[int, ...]]:
    return {tuple(t for t in r["labels"] if t != -100) for r in rows}


def test_lambda_one_trains_only_on_student_samples(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    data = chat_rows(tok)
    config = DistillConfig(**GKD, **SAMPLING, on_policy_fraction=1.0)
    trainer = make_trainer(tmp_path, tok, teacher, student, config, data)
    logs = train_logs(trainer)
    data_prompts = {tuple(r["input_ids"][: next(i for i, t in enumerate(r["labels"]) if t != -100)]) for r in data}
    eos = set(stop_ids(tok, student))
    per_step = {}
    for step, batch, n_items in trainer.seen:
        labels = batch["labels"]
        per_step.setdefault(step, [0, n_items])[0] += int((labels[:, 1:] != -100).sum())
        for b in range(labels.shape[0]):
            supervised = labels[b] != -100
            first = int(supervised.nonzero()[0])
            completion = labels[b][supervised].tolist()
            assert tuple(batch["input_ids"][b, :first].tolist()) in data_prompts  # the data's prompt ...
            assert tuple(completion) not in data_answers(data)  # ... followed by a sampled completion
            assert len(completion) <= 12 and all(t not in eos for t in completion[:-1])
            assert int(batch["attention_mask"][b].sum()) == first + len(completion)  # nothing after the EOS
    # num_items_in_batch counts the generated labels of the whole step (both micro-batches)
    assert len(per_step) == 2 and all(counted == int(n) for counted, n in per_step.values())
    assert [h["on_policy"] for h in logs] == [1.0, 1.0]
    assert all(0 < h["generated_length"] <= 12 and 0 < h["generation_time_share"] < 1 for h in logs)
