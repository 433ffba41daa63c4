"""One rank of ``test_sharded.py``'s FSDP2 check, run under ``torch.distributed.run`` with gloo on CPU.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_worker.py TEACHER STUDENT PLACEMENT WRAP

Every rank computes the reference first: the plain (unsharded) student on the whole batch, loss and
gradients. Then the student is sharded as Accelerate's FSDP2 does it (``fully_shard`` per decoder
layer, then the root; WRAP=head also makes the lm_head its own unit, gathered only inside its own
call, as ZeRO-3 gathers every module), the teacher is replicated or sharded (``teachers.placement``), each rank runs
the trainer's loss path (``inside_forward`` → ``student_objective`` → ``through_head``) on its half
of the batch, normalised by the global supervised-token count and scaled by the world size as the
trainer does, and backward. FSDP2 reduce-scatters the gradients; their gathered ``full_tensor()``
must equal the reference. Prints ``OK rank=R`` on success; an assertion error otherwise.
"""

from __future__ import annotations

import copy
import sys
from functools import partial

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from distill_plugin.args import DistillConfig
from distill_plugin.losses.chunked import supervised_mask
from distill_plugin.modeling import inside_forward, model_inputs
from distill_plugin.teachers import TeacherModelSource
from distill_plugin.teachers.placement import shard_teacher
from distill_plugin.trainer import student_objective

ROWS = (3, 25, 6, 30)  # supervised tokens per row: uneven, so a per-rank normalisation would show


def batch(tok):
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in ROWS:
        ids = torch.randint(0, 256, (32,), generator=g)
        labels = ids.clone()
        labels[: 32 - n] = -100
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * 32, "labels": labels.tolist()})
    return DataCollatorForSeq2Seq(tok, padding=True)(rows)


def objective(model, source, terms, inputs):
    mask = supervised_mask(inputs["labels"])
    fn = partial(student_objective, model=model, labels=inputs["labels"], mask=mask, terms=terms,
                 signals=source.signals(inputs, mask))
    return inside_forward(model, fn, **model_inputs(inputs))


def main(teacher_path: str, student_path: str, placement: str, wrap: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = AutoTokenizer.from_pretrained(student_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    terms = DistillConfig(teacher="tiny", kd_weight=0.7, ce_weight=0.3, temperature=2.0, chunk_size=7).loss_terms()
    inputs = batch(tok)
    total = supervised_mask(inputs["labels"]).sum()

    plain = copy.deepcopy(student)
    ref_objective, ref_sums = objective(plain, TeacherModelSource(teacher, len(tok)), terms, inputs)
    (ref_objective / total).backward()
    ref_grads = dict(plain.named_parameters())

    for layer in student.model.layers:
        fully_shard(layer)
    if wrap == "head":
        fully_shard(student.lm_head)
    fully_shard(student)
    assert isinstance(student.lm_head.weight, DTensor), "the student's lm_head is not sharded"
    if placement == "shard":
        teacher = shard_teacher(copy.deepcopy(teacher), "cpu")
        assert isinstance(teacher.model.layers[0].mlp.up_proj.weight, DTensor)
        assert not isinstance(teacher.lm_head.weight, DTensor)  # the head stays whole for the loss
    source = TeacherModelSource(teacher, len(tok))

    half = {k: v[rank * 2:(rank + 1) * 2] for k, v in inputs.items()}
    mine, sums = objective(student, source, terms, half)
    (mine / total * world).backward()

    parts = torch.stack([mine.detach(), *sums.detach()])
    dist.all_reduce(parts)  # Σ over ranks of the per-rank sums = the whole batch's sums
    torch.testing.assert_close(parts, torch.stack([ref_objective.detach(), *ref_sums]), rtol=1e-5, atol=1e-6)
    tied = student.config.tie_word_embeddings
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied
    for name, param in student.named_parameters():
        grad = param.grad.full_tensor()
        torch.testing.assert_close(grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert plain.lm_head.weight.grad.norm() > 0
    print(f"OK rank={rank} placement={placement} wrap={wrap} tied={tied} loss={float(parts[0] / total):.6f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
