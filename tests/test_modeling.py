"""The forward redirection: the student's fused loss runs inside the outermost module's forward call,
so an engine that gathers parameters around forward (FSDP, ZeRO-3) sees the whole lm_head."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from test_trainer import HiddenNorm, load_pair, make_trainer, uneven_rows


def batch_of(tok):
    return DataCollatorForSeq2Seq(tok, padding=True)(copy.deepcopy(uneven_rows()))


def traced_loss(trainer, outer, batch):
    """compute_loss on ``outer`` with hooks on it; returns (loss, the order of hook and loss events)."""
    events = []
    terms = trainer.loss_terms
    trainer.loss_terms = terms + (HiddenNorm(0.0, events),)  # weight 0: observes, changes nothing
    handles = [outer.register_forward_pre_hook(lambda *_: events.append("pre")),
               outer.register_forward_hook(lambda *_: events.append("post"))]
    try:
        return trainer.compute_loss(outer, batch), events
    finally:
        trainer.loss_terms = terms
        for handle in handles:
            handle.remove()


def test_loss_runs_inside_the_model_forward(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 4, 1)
    loss, events = traced_loss(trainer, student, batch_of(tok))
    assert events == ["pre", "loss", "post"]  # one forward call (no second pass), the loss inside it
    assert "forward" not in student.__dict__  # the redirection leaves the model as it found it
    loss.backward()
    assert student.lm_head.weight.grad.norm() > 0


@pytest.fixture
def gloo_group():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_ddp_wrapper_runs_hooks_around_the_loss_and_gives_the_same_gradients(tiny_pair, tmp_path, gloo_group):
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 4, 1)
    plain = copy.deepcopy(student)
    ddp = torch.nn.parallel.DistributedDataParallel(student)
    batch = batch_of(tok)
    loss, events = traced_loss(trainer, ddp, batch)
    assert events == ["pre", "loss", "post"]
    loss.backward()
    trainer.compute_loss(plain, batch).backward()
    for (name, p), q in zip(student.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


class GatherAroundForward(torch.nn.Module):
    """A toy ZeRO-3/FSDP engine: the lm_head weight is an empty placeholder except during forward."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.full = module.lm_head.weight.data
        module.lm_head.weight.data = torch.empty(0)

    def forward(self, *args, **kwargs):
        self.module.lm_head.weight.data = self.full  # gather
        try:
            return self.module(*args, **kwargs)
        finally:
            self.module.lm_head.weight.data = torch.empty(0)  # release


def test_an_engine_that_gathers_around_forward_sees_the_full_lm_head(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 4, 1)
    batch = batch_of(tok)
    student.eval()
    with torch.no_grad():
        expected = trainer.compute_loss(student, batch)
        engine = GatherAroundForward(student)
        assert student.lm_head.weight.numel() == 0
        torch.testing.assert_close(trainer.compute_loss(engine, batch), expected)


def _eval_then_train(layer) -> None:
    """An evaluation's forward (eval mode, no gradient), then a training forward and backward."""
    import torch

    x = torch.randn(3, 64)
    with torch.no_grad():
        layer.eval()(x)
    y = layer.train()(x.requires_grad_())
    y.sum().backward()


def test_4bit_layers_keep_training_after_an_evaluation_on_cpu():
    """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 inference kernel on the first eval forward
    and keeps it; with the repacking off (what the plugin and the TRL trainer do to the student) a
    training forward after an evaluation works. Where the CPU has AVX512-BF16 the unguarded layer is
    also checked to fail, so the guard is known to be what makes the difference."""
    import pytest
    import torch

    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    from distill_plugin.modeling import keep_4bit_layers_trainable_on_cpu

    def layer():
        torch.manual_seed(0)
        lin = bnb.nn.Linear4bit(64, 32, bias=True, compute_dtype=torch.float32, quant_type="nf4")
        lin.load_state_dict(torch.nn.Linear(64, 32).state_dict())
        return torch.nn.Sequential(lin.to("cpu"))

    guarded = layer()
    assert keep_4bit_layers_trainable_on_cpu(guarded) == (1 if has_avx512bf16() else 0)
    _eval_then_train(guarded)
    if has_avx512bf16():
        with pytest.raises(RuntimeError, match="leaf Variable"):
            _eval_then_train(layer())
