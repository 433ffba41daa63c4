"""Student step time with a served teacher (``distill.teacher_server``) vs the in-process teacher,
and what the read-ahead (``prefetch_steps``) buys.

    python benchmarks/bench_teacher_server.py [--steps 12] [--micro-batch 4] [--accum 2] [--delay-ms 0 50]

The tiny pair (``distill_plugin.testing.tiny``: teacher hidden 48, student hidden 32) on the
arithmetic chats, CPU, fp32. Each step is what the trainer does per optimizer step: for each of
``--accum`` micro-batches the teacher signal (``source.signals``), the student forward, the fused
loss (``LogitTerms``: dense online KD for the in-process teacher, the top-k loss for the served one),
backward; then an AdamW step. Rows:

* ``in-process``: ``TeacherModelSource`` (the teacher's forward runs inside the step).
* ``served, prefetch 0``: ``ServerTopKSource`` asking on demand: the step waits for every answer.
* ``served, prefetch 1``: the next step's micro-batches are read ahead and their requests in flight
  while the student trains (``read_ahead``, as ``DistillTrainerMixin.get_batch_samples`` wires it).

The server is the project's ``distill_plugin.serve`` on 127.0.0.1 (through the tests' fault wrapper,
whose ``delay_s`` adds a fixed latency to every request: a remote GPU server's network and queueing
time, ``--delay-ms``). Server and student share this machine's CPUs, so without added latency the
server's compute competes with the student's. ``wait`` is ``teacher_wait_s``: time per step blocked
on the server. The first two steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "teachers")]

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from distill_plugin.args import DistillConfig, TeacherServerConfig  # noqa: E402
from distill_plugin.demo.core import collate, encode  # noqa: E402
from distill_plugin.testing.addition import make_split  # noqa: E402
from distill_plugin.losses.chunked import supervised_mask  # noqa: E402
from distill_plugin.losses.terms import run_terms  # noqa: E402
from distill_plugin.modeling import final_hidden_states, output_head  # noqa: E402
from distill_plugin.signals import StudentRows  # noqa: E402
from distill_plugin.teachers import TeacherModelSource  # noqa: E402
from distill_plugin.teachers.server import ServerTopKSource  # noqa: E402
from distill_plugin.testing.tiny import build_pair  # noqa: E402
from served_teacher import serve, set_faults  # noqa: E402

WARMUP = 2


def batches(tokenizer, steps: int, micro: int, accum: int) -> list[dict]:
    rows = [encode(tokenizer, r) for r in make_split(steps * micro * accum, seed=0)]
    return [collate(rows[i:i + micro], tokenizer.pad_token_id) for i in range(0, len(rows), micro)]


def train(student_dir, source, config: DistillConfig, data: list[dict], accum: int) -> list[float]:
    """Seconds per optimizer step (after warm-up)."""
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    terms = config.loss_terms()
    # as DistillTrainerMixin.get_batch_samples wires it (prefetch_steps 0: the iterator itself)
    # fresh batch dicts: a read-ahead stores its pending answer in the batch it read
    fresh = iter([dict(batch) for batch in data])
    stream = source.read_ahead(fresh, accum) if hasattr(source, "read_ahead") else fresh
    times = []
    for step in range(len(data) // accum):
        started = time.perf_counter()
        micro = [next(stream) for _ in range(accum)]
        n = sum(int(supervised_mask(b["labels"]).sum()) for b in micro)
        for batch in micro:
            mask = supervised_mask(batch["labels"])
            signals = source.signals(batch, mask)
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            hidden = final_hidden_states(student, inputs)
            rows = StudentRows(hidden[:, :-1][mask], batch["labels"][:, 1:][mask], output_head(student))
            (run_terms(terms, rows, signals).objective / n).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= WARMUP:
            times.append(time.perf_counter() - started)
        if step == WARMUP - 1 and hasattr(source, "pop_metrics"):
            source.pop_metrics(accum)  # drop the warm-up's wait
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 50.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_teacher_server_"))
    teacher_dir, student_dir = build_pair(root, teacher_hidden=48, student_hidden=32)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    data = batches(tokenizer, args.steps, args.micro_batch, args.accum)
    rows = []

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval().requires_grad_(False)
    online = DistillConfig(teacher=str(teacher_dir))
    times = train(student_dir, TeacherModelSource(teacher, len(tokenizer)), online, data, args.accum)
    rows.append(("in-process teacher (dense KD)", "-", times, None))

    with serve(teacher_dir, "--served-model-name", "tiny-teacher", "--max-logprobs", str(args.top_k)) as url:
        for delay in args.delay_ms:
            for prefetch in (0, 1):
                set_faults(url, delay_s=delay / 1000)
                server = TeacherServerConfig(url=url, model="tiny-teacher", top_k=args.top_k, prefetch_steps=prefetch)
                with ServerTopKSource(server, tokenizer) as source:
                    source.connect()
                    times = train(student_dir, source, DistillConfig(teacher_server=server), data, args.accum)
                    wait = source.pop_metrics(args.accum).get("teacher_wait_s", 0.0)
                rows.append((f"served top-{args.top_k}, prefetch {prefetch}", f"{delay:g}", times, wait))

    print(f"\ntiny pair on CPU, micro-batch {args.micro_batch} x accumulation {args.accum}, "
          f"{args.steps - WARMUP} timed steps; torch threads 1\n")
    print("| teacher | added latency (ms/request) | ms / step (median) | teacher wait (ms / step) |")
    print("|---|---|---|---|")
    for name, delay, times, wait in rows:
        w = "-" if wait is None else f"{1000 * wait:.0f}"
        print(f"| {name} | {delay} | {1000 * statistics.median(times):.0f} | {w} |")


if __name__ == "__main__":
    main()
