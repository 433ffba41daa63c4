"""Training-step time and peak memory: logit KD alone vs logit + hidden-state KD.

One step = teacher forward (no grad) → student forward with the loss terms inside → backward →
SGD step over the student and the projectors: the path of ``DistillTrainerMixin.compute_loss``
without the HF Trainer around it. Models are random Qwen2-style ones (``distill_plugin.testing.tiny``) with
the vocabulary padded to ``--vocab``; half of each row is prompt (unsupervised).

Each case runs in a fresh subprocess. Time: median over ``--repeats`` steps after ``--warmup``
(perf_counter; CUDA-synchronised on GPU). Peak memory: CUDA ``max_memory_allocated`` above the
models' allocation; CPU: peak RSS growth over the steps (VmHWM after resetting it via
/proc/self/clear_refs).

    python benchmarks/bench_hidden_kd.py --device cpu
    python benchmarks/bench_hidden_kd.py --device cuda --batch 4 --seq 4096 --student-hidden 1536 \\
        --teacher-hidden 3584 --student-layers 28 --teacher-layers 28 --vocab 151936
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {"logit": {}, "logit+hidden": {"hidden_weight": 1.0, "hidden_loss": "cosine", "hidden_layers": "uniform:4"}}


def rss_hwm_reset() -> float:
    Path("/proc/self/clear_refs").write_text("5")
    return rss("VmRSS")


def rss(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024**2  # GiB
    return float("nan")


def measure_steps(name: str, a, device, student, source, terms, params) -> dict:
    """Time the case's training step (teacher forward → student forward with ``terms`` → backward → SGD
    over ``params``) on random ids, half of each row prompt: median over ``a.repeats`` steps after
    ``a.warmup``, and the peak memory above the models' (module docstring)."""
    from distill_plugin.losses import supervised_mask
    from distill_plugin.modeling import model_inputs
    from distill_plugin.trainer import student_objective

    optimizer = torch.optim.SGD(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (a.batch, a.seq), generator=g).to(device)
    labels = ids.clone()
    labels[:, : a.seq // 2] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def step():
        mask = supervised_mask(labels)
        signals = source.signals(inputs, mask)
        objective, _ = student_objective(student.forward, student, labels, mask, terms, signals, **model_inputs(inputs))
        (objective / mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    base = rss_hwm_reset() if device.type == "cpu" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 1024**3
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = rss("VmHWM") if device.type == "cpu" else torch.cuda.max_memory_allocated() / 1024**3
    pairs = next((t.pairs for t in terms if hasattr(t, "pairs")), ())
    return {"case": name, "ms": 1000 * statistics.median(times), "peak_gib": peak - base, "pairs": str(list(pairs))}


def run_case(name: str, a) -> dict:
    from distill_plugin.args import DistillConfig
    from distill_plugin.teachers import TeacherModelSource
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    torch.set_num_threads(a.threads)
    device, tok = torch.device(a.device), build_tokenizer()
    teacher = build_model(None, tok, a.teacher_hidden, a.teacher_layers, vocab_pad_to=a.vocab, seed=1).to(device).eval().requires_grad_(False)
    student = build_model(None, tok, a.student_hidden, a.student_layers, vocab_pad_to=a.vocab, seed=2).to(device).train()
    config = DistillConfig(teacher="bench", kd_weight=0.5, ce_weight=0.5, **CASES[name])
    terms = config.loss_terms(student, teacher)
    source = TeacherModelSource(teacher, a.vocab)
    teacher_layers = {h for t in terms for h in getattr(t, "teacher_layers", ())}
    if teacher_layers:
        source.request_hidden(teacher_layers)
    projectors = [t.trainable.to(device) for t in terms if getattr(t, "trainable", None) is not None]
    params = list(student.parameters()) + [p for m in projectors for p in m.parameters()]
    return measure_steps(name, a, device, student, source, terms, params)


def step_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The step benchmarks' shared options (sizes, device, repeats, threads, the internal ``--case``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--student-hidden", type=int, default=256)
    p.add_argument("--teacher-hidden", type=int, default=512)
    p.add_argument("--student-layers", type=int, default=4)
    p.add_argument("--teacher-layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    return p


def case_rows(a, script: str, cases, run_case, env: dict | None = None) -> list[dict] | None:
    """With ``--case``: print that case's measurement as JSON and return None. Otherwise run every case of
    ``cases`` in a fresh subprocess of ``script`` (so one case's memory does not count in another's) and
    return their measurements."""
    if a.case:
        print(json.dumps(run_case(a.case, a)))
        return None
    rows = []
    for name in cases:
        out = subprocess.run([sys.executable, script, *sys.argv[1:], "--case", name], capture_output=True, text=True,
                             check=True, env=env)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    a = step_parser(__doc__.splitlines()[0], repeats=5).parse_args()
    rows = case_rows(a, __file__, CASES, run_case)
    if rows is None:
        return
    print(f"device={a.device} B={a.batch} T={a.seq} V={a.vocab} student {a.student_layers}x{a.student_hidden} "
          f"teacher {a.teacher_layers}x{a.teacher_hidden}, median of {a.repeats}\n")
    print("| case | step ms | peak GiB | layer pairs |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['ms']:.0f} | {r['peak_gib']:.3f} | {r['pairs'] or '—'} |")


if __name__ == "__main__":
    main()
