"""Step time and tokens/s of on-policy (GKD) vs off-policy distillation steps, and where the time goes.

One optimizer step, as the trainer runs it: (on-policy only) the student samples a completion for
every prompt of the step's ``--accumulation`` micro-batches (``OnPolicySteps.generated_together``: the
rollout, then the rows are rebuilt) → per micro-batch: teacher forward (no grad) → student forward with
the fused JSD loss inside → backward; then the optimizer step (``DistillTrainerMixin.compute_loss``,
the HF Trainer loop around it left out). Prompts are the demo's addition chats
(``distill_plugin.testing.addition``) rendered with the student's chat template; off-policy steps
train on the data's answers. Cases:

    off-policy                      the data's completions
    on-policy                       the trainer's path: the step's micro-batches sampled in one rollout
                                    (``generation.decode.sample_tokens``)
    on-policy (per micro-batch)     the same sampler, one rollout per micro-batch (only with --accumulation > 1)
    on-policy (generate)            ``model.generate`` through ``HFBackend``, one call per micro-batch, for reference

The cases run interleaved (one step of each, the order rotated), so a contended machine slows them
alike. Reported per case: median step time over ``--repeats`` steps after ``--warmup``, its split into
generation and loss (teacher + student forward + backward + step), the median (min–max) of the
per-step generation share, supervised tokens per step and tokens/s (supervised tokens / step time),
and the generated tokens per second of the sampling phase.

    python benchmarks/bench_onpolicy.py                      # tiny pair on CPU, one micro-batch per step
    python benchmarks/bench_onpolicy.py --accumulation 4     # the GKD recipe's accumulation
    python benchmarks/bench_onpolicy.py --device cuda --student Qwen/Qwen2.5-1.5B-Instruct \\
        --teacher Qwen/Qwen2.5-7B-Instruct --batch 8 --accumulation 4 --max-new-tokens 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(a):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.testing.tiny import build_pair

    if a.student is None:
        a.teacher, a.student = map(str, build_pair(tempfile.mkdtemp(prefix="bench_onpolicy_"), a.teacher_hidden, a.student_hidden))
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.student)
    teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=dtype).to(a.device).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(a.student, dtype=dtype).to(a.device)
    return tok, teacher, student


def batches(tok, n_batches: int, batch: int, seed: int = 0):
    from transformers import DataCollatorForSeq2Seq

    from distill_plugin.testing.addition import make_split

    collate, out = DataCollatorForSeq2Seq(tok, padding=True), []
    rows = make_split(n_batches * batch, seed=seed)
    for start in range(0, len(rows), batch):
        encoded = []
        for example in rows[start:start + batch]:
            prompt = tok.apply_chat_template(example["messages"][:1], tokenize=False, add_generation_prompt=True)
            answer = example["messages"][1]["content"] + tok.eos_token
            p, c = tok(prompt, add_special_tokens=False)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
            encoded.append({"input_ids": p + c, "attention_mask": [1] * (len(p) + len(c)), "labels": [-100] * len(p) + c})
        out.append(collate(encoded))
    return out


class GenerateRollout:
    """The former ``hf`` rollout, kept here as the reference row: ``model.generate`` through
    ``HFBackend`` (one call per micro-batch: generate's set-up, full-batch steps until every row has
    stopped, each completion decoded to text)."""

    def __init__(self, rollout):
        self.tokenizer, self.sampling = rollout.tokenizer, rollout.sampling

    def sample(self, model, prompts):
        from distill_plugin.generation.hf import HFBackend
        from distill_plugin.generation.rollout import generation_mode

        out = [None] * len(prompts)
        with generation_mode(model):
            HFBackend(model, self.tokenizer, batch_size=len(prompts)).generate(
                list(prompts), self.sampling, lambda i, c: out.__setitem__(i, c[0].token_ids))
        return out


CASES = ("off-policy", "on-policy", "on-policy (per micro-batch)", "on-policy (generate)")


def run(a) -> list[dict]:
    import copy

    from transformers import Trainer, TrainingArguments

    from distill_plugin.args import DistillConfig
    from distill_plugin.teachers import TeacherModelSource
    from distill_plugin.trainer import DistillTrainerMixin

    class Bench(DistillTrainerMixin, Trainer):
        pass

    torch.set_num_threads(a.threads)
    tok, teacher, student = load(a)
    config = DistillConfig(teacher="bench", divergence="jsd", beta=0.5, on_policy_fraction=1.0,
                           max_new_tokens=a.max_new_tokens, generation_temperature=1.0)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=a.device == "cpu", seed=0)
    trainer = Bench(model=student, args=args, processing_class=tok)
    trainer.setup_distillation(config, TeacherModelSource(teacher, vocab_size=len(tok)))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    steps = trainer.distill_hooks["on_policy"].steps
    reference = copy.copy(steps)
    reference.rollout = GenerateRollout(steps.rollout)
    data = [{k: v.to(a.device) for k, v in b.items()} for b in batches(tok, (a.warmup + a.repeats) * a.accumulation, a.batch)]
    groups = [data[i:i + a.accumulation] for i in range(0, len(data), a.accumulation)]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    cases = [c for c in CASES if c in a.cases and (a.accumulation > 1 or c != "on-policy (per micro-batch)")]
    sample = {"on-policy": lambda g: steps.generated_together(g, student),
              "on-policy (per micro-batch)": lambda g: [steps.generated_together([b], student)[0] for b in g],
              "on-policy (generate)": lambda g: [reference.generated_together([b], student)[0] for b in g],
              "off-policy": lambda g: g}
    times = {c: {"step": [], "generation": [], "loss": [], "tokens": [], "generated": []} for c in cases}
    for i, group in enumerate(groups):  # the cases interleaved, one step each per group, order rotated
        for case in cases[i % len(cases):] + cases[: i % len(cases)]:
            student.train()
            sync()
            start = time.perf_counter()
            inputs = sample[case](group)
            sync()
            mid = time.perf_counter()
            n = sum(b["labels"][:, 1:].ne(-100).sum() for b in inputs)
            for b in inputs:
                trainer.compute_loss(student, b, num_items_in_batch=n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            end = time.perf_counter()
            if i >= a.warmup:
                t = times[case]
                t["step"].append(end - start)
                t["generation"].append(mid - start)
                t["loss"].append(end - mid)
                t["tokens"].append(int(n))
                t["generated"].append(sum(int(b["labels"].ne(-100).sum()) for b in inputs) if case != "off-policy" else 0)
    results = []
    for case, t in times.items():
        step, gen = statistics.median(t["step"]), statistics.median(t["generation"])
        shares = [g / s for g, s in zip(t["generation"], t["step"])]
        results.append({
            "case": case, "step_ms": 1e3 * step, "generation_ms": 1e3 * gen, "loss_ms": 1e3 * statistics.median(t["loss"]),
            "share": statistics.median(shares), "share_range": (min(shares), max(shares)),
            "tokens": statistics.mean(t["tokens"]), "tokens_per_s": statistics.mean(t["tokens"]) / step,
            "gen_tokens_per_s": statistics.mean(t["generated"]) / gen if case != "off-policy" else float("nan"),
        })
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--student", help="student path or hub id (default: a freshly built tiny pair)")
    p.add_argument("--teacher", help="teacher path or hub id (with --student)")
    p.add_argument("--student-hidden", type=int, default=32)
    p.add_argument("--teacher-hidden", type=int, default=48)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=8, help="rows per micro-batch")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    a = p.parse_args(argv)
    if (a.student is None) != (a.teacher is None):
        p.error("give both --student and --teacher, or neither (tiny pair)")
    rows = run(a)
    print(f"device {a.device}, batch {a.batch} x {a.accumulation} micro-batch(es), max_new_tokens {a.max_new_tokens}, {a.threads} thread(s), "
          f"median of {a.repeats} steps after {a.warmup} warm-up, cases interleaved")
    print("| case | step ms | generation ms | loss ms | generation share (min–max) | supervised tokens/step | tokens/s | generated tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["share_range"]
        gen_tps = "—" if r["gen_tokens_per_s"] != r["gen_tokens_per_s"] else f"{r['gen_tokens_per_s']:.0f}"
        print(f"| {r['case']} | {r['step_ms']:.1f} | {r['generation_ms']:.1f} | {r['loss_ms']:.1f} | {r['share']:.0%} ({lo:.0%}–{hi:.0%}) | "
              f"{r['tokens']:.0f} | {r['tokens_per_s']:.0f} | {gen_tps} |")

if __name__ == "__main__":
    main()
