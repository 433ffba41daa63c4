"""One rank of ``test_onpolicy_ddp.py``: on-policy GKD through the real Trainer under DDP (gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/onpolicy_ddp_worker.py TEACHER STUDENT OUT

λ = 0.5, seed 0: step 0 samples from the student, step 1 uses the data (``StepSchedule(0.5, 0)``).
Each rank trains 2 steps of 2 micro-batches of 2 rows on its own shard of the chats. Rank 1's
student is made to emit EOS first whenever it samples (a hook on its lm_head in eval mode only), so
the ranks generate very different lengths. Every micro-batch that reaches ``generated`` and the
``num_items_in_batch`` each micro-batch's loss got are recorded; rank 0 gathers all ranks' records
and checks the module docstring of ``distill_plugin.onpolicy.steps``. Prints ``OK rank=R``.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist

from distill_plugin.args import DistillConfig
from distill_plugin.onpolicy.batch import split_prompts
from distill_plugin.onpolicy.schedule import StepSchedule
from test_onpolicy_trainer import GKD, chat_rows, load_pair, make_trainer

BS, GA, STEPS, MAX_NEW = 2, 2, 2, 12


def force_eos(student, eos: int) -> None:
    """While the student samples (eval mode), EOS wins every draw; training logits are untouched."""
    def hook(module, args, logits):
        if not module.training:
            logits = logits.clone()
            logits[..., eos] = 1e4
            return logits
    student.lm_head.register_forward_hook(hook)


def main(teacher_path: str, student_path: str, out: str) -> None:
    tok, teacher, student = load_pair((teacher_path, student_path))
    config = DistillConfig(**GKD, max_new_tokens=MAX_NEW, on_policy_fraction=0.5)
    trainer = make_trainer(out, tok, teacher, student, config, chat_rows(tok, n=16), bs=BS, ga=GA, steps=STEPS)
    rank, world = trainer.args.process_index, trainer.args.world_size
    assert world == 2 and dist.is_initialized()
    eos_ids = trainer.distill_hooks["on_policy"].steps.eos_ids
    if rank == 1:
        force_eos(student, eos_ids[0])

    sampled = []  # (step, prompts given, prompts of the generated rows, completion lengths)
    generated = trainer.distill_hooks["on_policy"].steps.generated_together

    def recording(batches, model):
        out_batches = generated(batches, model)
        for batch, out_batch in zip(batches, out_batches):
            prompts = split_prompts(batch["input_ids"], batch["labels"], batch.get("attention_mask"))
            labels = out_batch["labels"]
            lengths = [int((labels[b] != -100).sum()) for b in range(labels.shape[0])]
            sampled.append((trainer.state.global_step, prompts, split_prompts(out_batch["input_ids"], labels,
                            out_batch["attention_mask"]), lengths))
        return out_batches

    trainer.distill_hooks["on_policy"].steps.generated_together = recording
    trainer.train()
    seen = [(step, int((batch["labels"][:, 1:] != -100).sum()), int(n)) for step, batch, n in trainer.seen]
    records = [None] * world
    dist.all_gather_object(records, {"sampled": sampled, "seen": seen})

    if rank == 0:
        decisions = StepSchedule(0.5, seed=0).decisions(0, STEPS)
        assert decisions == [True, False], decisions  # the seed gives both kinds of step
        for r, rec in enumerate(records):
            # (1) every micro-batch of an on-policy step is generated, none of an off-policy step
            assert [s for s, *_ in rec["sampled"]] == [k for k in range(STEPS) if decisions[k] for _ in range(GA)], (r, rec)
            for _, given, prompts, lengths in rec["sampled"]:
                assert prompts == given  # (2) its own batch's prompts, completions after them
                if r == 1:  # (5) EOS first: one supervised token per row, and the run went on
                    assert lengths == [1] * BS, lengths
                else:
                    assert all(1 <= n <= MAX_NEW for n in lengths) and max(lengths) > 1, lengths
        assert records[0]["sampled"][0][1] != records[1]["sampled"][0][1]  # the ranks hold different rows
        # (3) every micro-batch's num_items_in_batch is the step's count over all ranks and micro-batches
        for k in range(STEPS):
            total = sum(n for rec in records for step, n, _ in rec["seen"] if step == k)
            assert all(n == total for rec in records for step, _, n in rec["seen"] if step == k), (k, total, records)
        # (4) the logs are the whole step's: completions and mean length over both ranks
        logs = [h for h in trainer.state.log_history if "loss" in h]
        assert len(logs) == STEPS and all(math.isfinite(h["loss"]) for h in logs)
        for k, entry in enumerate(logs):
            lengths = [n for rec in records for step, _, _, ls in rec["sampled"] if step == k for n in ls]
            assert entry["on_policy"] == sum(decisions[: k + 1]) / (k + 1)
            assert entry["generated_completions"] == len(lengths) == (world * GA * BS if decisions[k] else 0), entry
            if lengths:
                assert entry["generated_length"] == round(sum(lengths) / len(lengths), 2), (entry, lengths)
                assert 0 < entry["generation_time_share"] < 1
            else:
                assert "generated_length" not in entry and entry["generation_time_share"] == 0.0
    dist.barrier()
    print(f"OK rank={rank}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
