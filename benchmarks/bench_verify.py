"""Throughput of the verifiers: maths checks/s/core (hard timeouts on) and sandboxed code-test runs/s.

    python benchmarks/bench_verify.py [--workers N] [--math-items 4000] [--code-runs 200]

Maths items are R1-style answers (reasoning, then a final answer) over a mix of tricky gold/pred
pairs (fractions, sets, intervals, units, \\text{}, wrong-but-close), checked by
`data_prep.verify_math.check` in `HardTimeoutPool` workers (forkserver, per-item hard timeout).
Code runs are one sandboxed process per test (`data_prep.sandbox.run_python`: namespaces when
available, rlimits, uid drop as root), a small stdin/stdout program, run from a thread pool.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import verify_math  # noqa: E402
from data_prep.sandbox import Limits, isolation_level, run_python  # noqa: E402
from data_prep.verify_code import same_output  # noqa: E402

PAIRS = [("42", "\\boxed{42}"), ("\\frac{1}{2}", "\\boxed{0.5}"), ("\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}"),
         ("(0,1]", "\\boxed{[0, 1]}"), ("5\\text{ cm}", "\\boxed{5}"), ("\\text{B}", "\\boxed{B}"),
         ("7", "The final answer is **7**."), ("x^2+2x+1", "\\boxed{(x+1)^2}"), ("-2", "\\boxed{2}"),
         ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt2}{2}}"), ("100", "\\boxed{1000}"), ("2,3", "\\boxed{3, 2}")]


def bench_math(n_items: int, workers: int, timeout_s: float) -> dict:
    items = [(g, f"Let me check.\n\nSo the answer is {p}") for i in range(n_items)
             for g, p in [PAIRS[i % len(PAIRS)]]]
    with verify_math.make_pool(workers, timeout_s) as pool:
        list(pool.map(items[: workers * 4]))  # warm-up: workers started, imports done
        t0 = time.perf_counter()
        out = list(pool.map(items))
        dt = time.perf_counter() - t0
    assert len(out) == n_items
    return {"items": n_items, "seconds": dt, "per_s": n_items / dt, "per_s_per_core": n_items / dt / workers,
            "timeouts": pool.timeouts}


def bench_code(n_runs: int, workers: int) -> dict:
    code = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n"
    limits = Limits(wall_s=5, cpu_s=5, memory_mb=512)

    def one(i):
        r = run_python(code, f"{i} {i + 1} {i + 2}\n", limits)
        return r.status == "ok" and same_output(r.stdout, str(3 * i + 3))

    run_python(code, "1\n", limits)  # warm-up
    with ThreadPoolExecutor(workers) as ex:
        t0 = time.perf_counter()
        ok = sum(ex.map(one, range(n_runs)))
        dt = time.perf_counter() - t0
    assert ok == n_runs, f"{n_runs - ok} runs failed"
    return {"runs": n_runs, "seconds": dt, "per_s": n_runs / dt, "per_s_per_core": n_runs / dt / workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--math-items", type=int, default=4000)
    ap.add_argument("--code-runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    m = bench_math(a.math_items, a.workers, a.timeout)
    c = bench_code(a.code_runs, a.workers)
    print(f"cores used: {a.workers} (machine has {os.cpu_count()}); sandbox isolation: {isolation_level()}")
    print("| verifier | items | seconds | per second | per second per core |")
    print("|---|---:|---:|---:|---:|")
    print(f"| maths (math-verify, hard timeout {a.timeout:g}s/item) | {m['items']} | {m['seconds']:.1f} | "
          f"{m['per_s']:.0f} | {m['per_s_per_core']:.0f} |")
    print(f"| code (1 sandboxed process per test) | {c['runs']} | {c['seconds']:.1f} | {c['per_s']:.1f} | "
          f"{c['per_s_per_core']:.1f} |")


if __name__ == "__main__":
    main()
