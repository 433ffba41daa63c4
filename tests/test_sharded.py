"""The fused loss under parameter-sharding engines (issue #17).

Real FSDP2 (``fully_shard``, 2 gloo processes on CPU, ``fsdp2_worker.py``): loss and gathered
gradients equal the plain model's, with the lm_head inside the root unit (Accelerate's wrapping) or
its own unit, tied embeddings, and the teacher replicated or sharded. ZeRO-3's per-module gather is
modelled in-process (DeepSpeed does not run here, see README "Scaling out"): the lm_head weight is
an empty placeholder except inside the lm_head's own call and its backward.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axolotl_runs import SUBPROCESS_ENV
from test_modeling import batch_of
from test_trainer import load_pair, make_trainer, uneven_rows

WORKER = Path(__file__).with_name("fsdp2_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tied_student(tmp_path_factory):
    """A student whose lm_head is its embedding matrix (Qwen2.5-0.5B/1.5B style)."""
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tied") / "student"
    build_model(path, build_tokenizer(), hidden_size=32, seed=2, tie_word_embeddings=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("placement, wrap, tied", [("shard", "head", False), ("replicate", "layers", True)])
def test_fsdp2_loss_and_gradients_match_the_unsharded_model(tiny_pair, tied_student, placement, wrap, tied):
    teacher, student = tiny_pair
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(WORKER), str(teacher), str(tied_student if tied else student), placement, wrap]
    proc = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    for rank in (0, 1):
        assert f"OK rank={rank} placement={placement} wrap={wrap} tied={tied}" in output, output[-3000:]


class GatherPerModule:
    """A toy ZeRO-3 for one module: its weight is an empty placeholder except inside the module's own
    call (pre-forward hook: gather; forward hook: release) and during the backward through that
    call's output (a hook on the output gathers; the gradient's arrival releases)."""

    def __init__(self, module: torch.nn.Module):
        self.param, self.full = module.weight, module.weight.data
        self.calls, self.seen = 0, []
        self.release()
        module.register_forward_pre_hook(lambda *_: self.gather())
        module.register_forward_hook(self.after_forward)
        self.param.register_post_accumulate_grad_hook(lambda _: self.release())

    def gather(self):
        self.calls += 1
        self.param.data = self.full

    def release(self):
        self.param.data = torch.empty(0)

    def after_forward(self, module, args, output):
        self.release()
        if output.requires_grad:
            output.register_hook(lambda grad: self.gather())


def test_loss_under_a_per_module_gather_equals_the_plain_loss_and_gradients(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    trainer = make_trainer(tmp_path, tok, teacher, student, uneven_rows(), 4, 1)
    plain, batch = copy.deepcopy(student), batch_of(tok)
    expected = trainer.compute_loss(plain, batch)
    expected.backward()
    engine = GatherPerModule(student.lm_head)
    assert student.lm_head.weight.numel() == 0
    loss = trainer.compute_loss(student, batch)
    assert engine.calls == 1  # the loss was the lm_head's own (only) call: the bypass triggers no gather
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.lm_head.weight.numel() == 0  # released again after its gradient arrived
    for (name, p), q in zip(student.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_device_map_placement_loads_a_dispatched_teacher_and_shard_needs_several_processes(tiny_pair):
    from distill_plugin.args import DistillConfig
    from distill_plugin.teachers import TeacherModelSource, load_teacher

    teacher_path, _ = tiny_pair
    config = DistillConfig(teacher=str(teacher_path), teacher_dtype="float32", teacher_placement="device_map")
    teacher = load_teacher(config, "cpu")
    # One CPU and no GPU here: "auto" puts everything on the CPU; a spread over GPUs is untested.
    assert {p.device.type for p in teacher.parameters()} == {"cpu"}
    source = TeacherModelSource(teacher, device="cpu")
    ids = torch.randint(0, 256, (1, 9))
    mask = torch.ones(1, 8, dtype=torch.bool)
    rows = source.signals({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mask)
    assert next(iter(rows.values())).rows.shape == (8, 48)
    with pytest.raises(ValueError, match="this run has one"):
        load_teacher(config.model_copy(update={"teacher_placement": "shard"}), "cpu")
