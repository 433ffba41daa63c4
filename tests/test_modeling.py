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
