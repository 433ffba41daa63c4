"""Peak memory of each data_prep stage on a generated file of >= 1 GB (goal: <= 400 MB per stage).

    python benchmarks/bench_data_memory.py [--size-gb 1.0] [--workdir /tmp/bench_data_memory]
                                           [--workers 2] [--code-root PATH] [--keep]

Writes ``gen/generations.jsonl`` of R1-style rows (a unique prompt, 4 generations of ~16 KB of
reasoning each, a boxed answer that is right for 3 of them), then runs verify (maths), filter
(with a decontamination set and near-duplicate detection) and export, each in a fresh Python
process, and prints the peak RSS of that process (``ru_maxrss``) and of its worker processes (the
maths verifiers). ``--code-root`` runs the stages from another checkout (e.g. an older commit) to
compare. Memory held on purpose: the ids seen (dedup, resume) and one MinHash per kept prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES = {  # stage -> code run in a fresh process (paths filled in by format())
    "verify": "from data_prep.verify import VerifyConfig, verify\n"
              "rep = verify('{work}/gen', '{work}/ver', VerifyConfig(task='math', workers={workers}))",
    "filter": "from data_prep.filters import FilterConfig, filter_rows\n"
              "rep = filter_rows('{work}/ver', '{work}/kept', FilterConfig(decontaminate=['{work}/bench.jsonl']))",
    "export": "from data_prep.export import ExportConfig, export\n"
              "rep = export('{work}/kept', '{work}/train/train.jsonl', ExportConfig())",
}
MEASURE = """
import json, resource, sys, time
t0 = time.perf_counter()
{code}
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows_in": rep.rows_in, "rows_out": rep.rows_out,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def make_generation_file(path: Path, size_bytes: int, seed: int = 0) -> int:
    """R1-style generation rows until the file holds ``size_bytes``; returns the row count."""
    rng = random.Random(seed)
    vocab = [f"w{rng.randrange(10**6):06d}" for _ in range(20000)]
    blocks = [" ".join(rng.choices(vocab, k=2000)) for _ in range(64)]  # ~16 KB of reasoning each
    path.parent.mkdir(parents=True, exist_ok=True)
    written, rows = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < size_bytes:
            prompt = f"Problem {rows}: " + " ".join(rng.choices(vocab, k=24)) + f". What is {rows} + 1?"
            gens = []
            for j in range(4):
                reasoning = f"step {j} of {rows}: " + blocks[rng.randrange(len(blocks))]
                content = f"The answer is \\boxed{{{rows + 1 if j < 3 else rows}}}."
                gens.append({"text": f"<think>\n{reasoning}\n</think>\n\n{content}", "reasoning": reasoning,
                             "content": content, "think_closed": True, "finish_reason": "stop",
                             "prompt_tokens": 40, "completion_tokens": 4000})
            row = {"id": f"p{rows}", "prompt": prompt, "answer": str(rows + 1), "source": "bench",
                   "messages": [{"role": "user", "content": prompt}], "generations": gens}
            line = json.dumps(row) + "\n"
            fh.write(line)
            written += len(line.encode())
            rows += 1
    return rows


def run_stage(stage: str, work: Path, workers: int, code_root: Path) -> dict:
    code = MEASURE.format(code=STAGES[stage].format(work=work, workers=workers))
    env = {**os.environ, "PYTHONPATH": str(code_root), "DISTILL_DATA_LOGLEVEL": "WARNING",
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=work)
    if res.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_data_memory"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose data_prep is measured")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    work = args.workdir.resolve()
    gen = work / "gen" / "generations.jsonl"
    if not (gen.exists() and gen.stat().st_size >= args.size_gb * 1e9):
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        rows = make_generation_file(gen, int(args.size_gb * 1e9))
        print(f"wrote {gen} ({gen.stat().st_size / 1e9:.2f} GB, {rows} rows) in {time.perf_counter() - t0:.0f}s")
    for d in ("ver", "kept", "train"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "bench.jsonl").write_text("".join(json.dumps({"problem": f"Benchmark question {i}: find the "
                                                           f"value of x when {i} x plus one equals {i}"}) + "\n"
                                              for i in range(500)))
    inputs = {"verify": work / "gen", "filter": work / "ver", "export": work / "kept"}
    print(f"code: {args.code_root}\n")
    print("| stage | input | rows in → out | seconds | peak RSS (MB) | workers' peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage in STAGES:
        size = sum(f.stat().st_size for f in inputs[stage].glob("*.jsonl")) / 1e9
        r = run_stage(stage, work, args.workers, args.code_root)
        print(f"| {stage} | {size:.2f} GB | {r['rows_in']} → {r['rows_out']} | {r['seconds']:.0f} | "
              f"{r['rss_mb']:.0f} | {r['workers_rss_mb']:.0f} |", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
