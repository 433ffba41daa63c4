"""EMA self-distillation (``methods/ema.py``): the update against a hand computation, the teacher
signal against a model holding the averaged weights (float64 loss and gradient), the average after
each optimizer step of a real Trainer and its exact resume, a LoRA student's adapter-sized average,
the config refusals, and the recipe's tiny twin through ``axolotl.cli.train`` (slow)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

from distill_plugin import methods
from distill_plugin.args import DistillConfig
from distill_plugin.errors import SetupError
from distill_plugin.hidden.capture import hidden_rows
from distill_plugin.losses.chunked import supervised_mask
from distill_plugin.losses.terms import run_terms
from distill_plugin.methods.ema import EMATeacherSource, EMAWeights
from distill_plugin.modeling import output_head, unwrap_causal_lm
from distill_plugin.signals import DenseLogits, StudentRows
from distill_plugin.testing.tiny import build_model, build_tokenizer
from distill_plugin.trainer import hook_state_file

from test_trainer import KDTrainer, uneven_rows

REPO = Path(__file__).resolve().parents[1]

CONFIG = DistillConfig(ema_decay=0.5, kd_weight=0.7, ce_weight=0.3, temperature=2.0)
SLOW = CONFIG.model_copy(update={"ema_decay": 0.9})  # a teacher lagging enough for a kd_loss the logs resolve


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def batch_of(tok, rows):
    return DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt")(rows)


def test_the_update_matches_a_hand_computation():
    """Three steps of EMA_t = d·EMA_{t−1} + (1−d)·θ_t from EMA_0 = θ_0; frozen parameters are not averaged."""
    module = torch.nn.Linear(3, 2, dtype=torch.float64)
    module.bias.requires_grad_(False)
    ema = EMAWeights({n: p for n, p in module.named_parameters() if p.requires_grad}, decay=0.9)
    assert list(ema.average) == ["weight"] and ema.average["weight"].dtype == torch.float64
    expected = module.weight.detach().clone()
    for step, value in enumerate((1.0, -2.0, 0.5), 1):
        with torch.no_grad():
            module.weight.copy_(value * torch.arange(6, dtype=torch.float64).view(2, 3) + step)
        ema.update()
        expected = 0.9 * expected + 0.1 * module.weight.detach()
        torch.testing.assert_close(ema.average["weight"], expected, rtol=1e-14, atol=0)
    assert ema.average["weight"].data_ptr() != module.weight.data_ptr()


def forward_kl_and_ce(zs, zt, targets, config):
    """float64 reference of ``kd_weight·T²·Σ KL(p_T ‖ q_T) + ce_weight·Σ CE`` over full logits."""
    t = config.temperature
    p, log_q = torch.softmax(zt / t, -1), torch.log_softmax(zs / t, -1)
    kd = (p * (p.log() - log_q)).sum()
    ce = torch.nn.functional.cross_entropy(zs, targets, reduction="sum")
    return config.kd_weight * t * t * kd + config.ce_weight * ce


def test_the_teacher_is_the_student_holding_the_average(tok):
    """The signal equals a forward of a copy whose weights are set to the average (the lm_head's
    included); the loss through ``LogitTerms`` and its gradient match the float64 reference."""
    student = build_model(None, tok, hidden_size=32, seed=3).double()
    source = EMATeacherSource(student, 0.5, len(tok))
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.05 * torch.randn_like(param))
    source.ema.update()  # EMA = (θ_0 + θ_1) / 2: neither the student nor its start
    weights = {n: p.detach().clone() for n, p in student.named_parameters()}
    reference = copy.deepcopy(student).eval()
    reference.load_state_dict(source.ema.state_dict(), strict=False)

    batch = batch_of(tok, uneven_rows())
    mask = supervised_mask(batch["labels"])
    student.train()
    signal = source.signals(batch, mask)[DenseLogits]
    assert student.training and all(torch.equal(p, weights[n]) for n, p in student.named_parameters())
    assert signal.head.weight.data_ptr() != student.lm_head.weight.data_ptr()
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    teacher_logits = reference(**inputs).logits[:, :-1][mask].detach()
    torch.testing.assert_close(signal.rows @ signal.head.weight.T, teacher_logits, rtol=1e-10, atol=1e-10)

    targets = batch["labels"][:, 1:][mask]
    rows, _ = hidden_rows(student, batch, mask, ())
    out = run_terms([CONFIG.logit_terms()], StudentRows(rows, targets, output_head(student)), {DenseLogits: signal})
    grads = torch.autograd.grad(out.objective, list(student.parameters()))
    expected = forward_kl_and_ce(student(**inputs).logits[:, :-1][mask], teacher_logits, targets, CONFIG)
    expected_grads = torch.autograd.grad(expected, list(student.parameters()))
    torch.testing.assert_close(out.objective.double(), expected, rtol=1e-5, atol=1e-6)
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), want, rtol=1e-4, atol=1e-6)  # the fused loss works in fp32


class Weights(TrainerCallback):
    """The student's trainable weights when training starts and after each optimizer step."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append(flat(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen.append(flat(model))


def flat(model):
    return torch.cat([p.detach().flatten().double() for p in model.parameters() if p.requires_grad])


def ema_trainer(out, tok, student, **kw):
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
        report_to=[], use_cpu=True, logging_steps=1, seed=0, max_steps=4, save_strategy="steps", save_steps=2, **kw,
    )
    trainer = KDTrainer(model=student, args=args, train_dataset=uneven_rows(), data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    setup = methods.Setup(SLOW, tok, student, args.device)
    trainer.setup_distillation(SLOW, methods.teacher_source(SLOW, setup))
    return trainer


def test_the_average_follows_each_optimizer_step_and_resumes_exactly(tok, tmp_path):
    """Through a real Trainer: the average after 4 steps is the hand recursion over θ_0..θ_4; a run
    resumed from the step-2 checkpoint logs the uninterrupted run's losses at steps 3 and 4."""
    base = build_model(None, tok, hidden_size=32, seed=4)
    full = ema_trainer(tmp_path / "full", tok, copy.deepcopy(base))
    weights = Weights()
    full.add_callback(weights)
    full.train()
    assert len(weights.seen) == 5
    expected = weights.seen[0]
    for theta in weights.seen[1:]:
        expected = 0.9 * expected + 0.1 * theta
    torch.testing.assert_close(torch.cat([a.flatten().double() for a in full.teacher_source.ema.average.values()]),
                               expected, rtol=1e-6, atol=1e-7)

    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / hook_state_file("ema")).exists()
    resumed = ema_trainer(tmp_path / "resumed", tok, copy.deepcopy(base))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    losses = lambda t: [v for e in t.state.log_history if "loss" in e and e["step"] > 2 for v in (e["loss"], e["kd_loss"])]
    tail = losses(full)
    assert len(tail) == 4 and min(tail) > 1e-4
    assert losses(resumed) == pytest.approx(tail, rel=1e-6)
    for name, average in full.teacher_source.ema.average.items():
        torch.testing.assert_close(resumed.teacher_source.ema.average[name], average, rtol=1e-6, atol=1e-8)
    # Resuming without the average is an error, not a silent restart from the resumed weights.
    (checkpoint / hook_state_file("ema")).unlink()
    with pytest.raises(FileNotFoundError, match=hook_state_file("ema")):
        ema_trainer(tmp_path / "again", tok, copy.deepcopy(base)).train(resume_from_checkpoint=str(checkpoint))


def test_a_lora_students_average_holds_exactly_the_adapters(tok):
    """r·(in + out) per adapted projection, nothing of the frozen base; with d = 1 the teacher stays
    the initial adapters (B = 0: the base model) however the student's adapters move."""
    from peft import LoraConfig, get_peft_model

    r, hidden, layers = 4, 32, 2
    model = get_peft_model(build_model(None, tok, hidden_size=hidden, num_layers=layers, seed=5),
                           LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    config = model.base_model.model.config
    kv_width = config.num_key_value_heads * hidden // config.num_attention_heads
    adapters = layers * (r * (hidden + hidden) + r * (hidden + kv_width))  # q: 32 → 32, v: 32 → kv_width
    config_ema = DistillConfig(ema_decay=1.0)
    source = methods.teacher_source(config_ema, methods.Setup(config_ema, tok, unwrap_causal_lm(model), "cpu"))
    assert isinstance(source, EMATeacherSource)
    assert sum(t.numel() for t in source.ema.average.values()) == adapters == model.get_nb_trainable_parameters()[0]
    assert all(".lora_A." in name or ".lora_B." in name for name in source.ema.average)

    batch = batch_of(tok, uneven_rows()[:2])
    mask = supervised_mask(batch["labels"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
        source.ema.update()
        with model.disable_adapter():
            base_rows, _ = hidden_rows(model, batch, mask, ())
        student_rows, _ = hidden_rows(model, batch, mask, ())
    teacher = source.signals(batch, mask)[DenseLogits]
    torch.testing.assert_close(teacher.rows, base_rows)
    assert (student_rows - base_rows).abs().max() > 1e-3


def test_trls_trainer_builds_the_ema_teacher(tiny_pair, arithmetic_data, tmp_path):
    """``DistillSFTTrainer`` with ``ema_decay`` alone: the student's average is the teacher, kd_loss is logged."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    dataset = load_dataset("json", data_files=str(arithmetic_data), split="train").select_columns(["messages"])
    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=1,
                     report_to=[], use_cpu=True, save_strategy="no", assistant_only_loss=True, max_length=128)
    trainer = make_trl_trainer_class()(model=str(tiny_pair[1]), args=args, train_dataset=dataset, processing_class=tok,
                                       distill_config={"ema_decay": 0.5, "kd_weight": 0.5, "ce_weight": 1.0})
    assert isinstance(trainer.teacher_source, EMATeacherSource)
    trainer.train()
    kd = [h["kd_loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(kd) == 3 and kd[0] == pytest.approx(0, abs=1e-6) and kd[-1] > 0


@pytest.mark.parametrize("other", [{"teacher": "t"}, {"teacher_logits": "store/"},
                                   {"teacher_server": {"url": "http://127.0.0.1:1/v1", "model": "m"}}])
def test_another_teacher_beside_the_ema_is_refused(other):
    key = next(iter(other))
    with pytest.raises(ValueError, match=f"`ema_decay` makes the student's own moving average the teacher; remove `{key}`"):
        DistillConfig(ema_decay=0.99, **other)


def test_the_config_refusals_and_the_assembly(tmp_path):
    for decay in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="ema_decay"):
            DistillConfig(ema_decay=decay)
    with pytest.raises(ValueError, match="`teacher_server` or `ema_decay`"):
        DistillConfig()
    config = DistillConfig(ema_decay=0.999, ce_weight=0.5)
    assert [m.name for m in methods.active(config)] == ["ema"]
    assert [type(t).__name__ for t in config.loss_terms()] == ["LogitTerms"]
    zero3 = tmp_path / "zero3.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    for cfg, engine in (({"fsdp_version": 2, "fsdp_config": {"fsdp_version": 2}}, "fsdp2"),
                        ({"fsdp": ["full_shard"]}, "fsdp1"), ({"deepspeed": str(zero3)}, "zero3")):
        with pytest.raises(SetupError, match=f"ema_decay: the EMA teacher swaps whole weights into the student, and {engine} shards"):
            methods.check_config(cfg, config)
    zero3.write_text('{"zero_optimization": {"stage": 2}}')
    methods.check_config({"deepspeed": str(zero3)}, config)
    methods.check_config({}, config)


@pytest.mark.slow
def test_the_recipes_twin_trains_and_logs_kd_loss(twin_root, tmp_path):
    """``recipes/ema_self_distill.yml``'s twin (LoRA, packing) finishes, keeps its header's promises, logs
    ``kd_loss`` at every step (0 at the first, where the average is the student, then > 0) and saves
    the adapters' average beside its checkpoint. d = 0.5 and a learning rate of 0.01: with the recipe's
    0.999 and 1e-4 the 4 steps' kd_loss is below the logs' 6 decimals."""
    from twin_runs import check_promises, train_twin

    recipe = REPO / "recipes" / "ema_self_distill.yml"
    run = train_twin(recipe, twin_root, tmp_path, overrides={"learning_rate": 0.01, "distill": {"ema_decay": 0.5}})
    check_promises(recipe, run)
    kd = [entry["kd_loss"] for entry in run.logs]
    assert all(math.isfinite(v) and v >= 0 for v in kd) and min(kd[1:]) > 0, run.logs
    (checkpoint,) = run.out.glob("checkpoint-*")
    with safe_open(str(checkpoint / hook_state_file("ema")), "pt") as f:
        names = set(f.keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
