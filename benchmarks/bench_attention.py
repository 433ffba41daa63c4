"""Training-step time and peak memory of attention transfer: logit KD with and without the term.

One step = teacher forward (no grad) → student forward with the loss terms inside → backward →
SGD step: the path of ``DistillTrainerMixin.compute_loss`` (sources and terms built by
``methods``, as the plugin builds them) without the HF Trainer around it. Models are random
Qwen2-shaped ones (``distill_plugin.testing.tiny``; head size 64, GQA with half as many key/value
heads) with the vocabulary padded to ``--vocab``; half of each row is prompt (unsupervised). The
teacher has twice the student's heads, so each student head is matched to the mean of 2.

Cases: logit KD with sdpa (what runs without the term), logit KD with eager attention (the
implementation the term needs: its own cost), and logit KD + attention transfer on eager over
``last:1`` and ``uniform:4`` layer pairs. Each case runs in a fresh subprocess; time and memory
are measured as in ``bench_hidden_kd.py`` (median step; CPU: peak RSS growth over the steps, CUDA:
``max_memory_allocated`` above the models). On CPU each case runs with glibc's mmap threshold fixed at
64 KiB (``MALLOC_MMAP_THRESHOLD_``): every tensor buffer is then mapped on allocation and returned
on free, so the RSS follows the live tensors instead of keeping what the warm-up step freed.

    python benchmarks/bench_attention.py --device cpu
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_hidden_kd import case_rows, measure_steps, step_parser  # noqa: E402  (benchmarks/ is the script's directory)

CASES = {
    "logit, sdpa": ("sdpa", {}),
    "logit, eager": ("eager", {}),
    "logit + attention last:1, eager": ("eager", {"attention_weight": 1.0, "attention_layers": "last:1"}),
    "logit + attention uniform:4, eager": ("eager", {"attention_weight": 1.0, "attention_layers": "uniform:4"}),
}
HEAD_DIM = 64


def run_case(name: str, a) -> dict:
    from distill_plugin import methods
    from distill_plugin.args import DistillConfig
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    torch.set_num_threads(a.threads)
    device, tok = torch.device(a.device), build_tokenizer()
    attn, keys = CASES[name]
    build = partial(build_model, None, tok, vocab_pad_to=a.vocab)
    teacher = build(a.teacher_hidden, a.teacher_layers, num_heads=a.teacher_hidden // HEAD_DIM, seed=1)
    student = build(a.student_hidden, a.student_layers, num_heads=a.student_hidden // HEAD_DIM, seed=2)
    for model in (teacher, student):
        model.set_attn_implementation(attn)
    teacher, student = teacher.to(device).eval().requires_grad_(False), student.to(device).train()
    config = DistillConfig(teacher="bench", kd_weight=0.5, ce_weight=0.5, **keys)
    setup = methods.Setup(config, tok, student, device, teacher_model=teacher)
    source, terms = methods.teacher_source(config, setup), methods.loss_terms(config, setup)
    return measure_steps(name, a, device, student, source, terms, list(student.parameters()))


def main() -> None:
    a = step_parser(__doc__.splitlines()[0], repeats=3).parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    rows = case_rows(a, __file__, CASES, run_case, env)
    if rows is None:
        return
    print(f"device={a.device} B={a.batch} T={a.seq} V={a.vocab} student {a.student_layers}x{a.student_hidden} "
          f"({a.student_hidden // HEAD_DIM} heads), teacher {a.teacher_layers}x{a.teacher_hidden} "
          f"({a.teacher_hidden // HEAD_DIM} heads), fp32, median of {a.repeats}\n")
    print("| case | step ms | peak GiB | layer pairs (student, teacher) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['ms']:.0f} | {r['peak_gib']:.3f} | {r['pairs'] if r['pairs'] != '[]' else '—'} |")


if __name__ == "__main__":
    main()
