"""Held-out quality of every distillation method: a teacher trained here, students through axolotl.cli.train.

Multi-digit addition with the column working in ``<think>`` (``distill_plugin/testing/addition.py``); a teacher
trained once; one student per method and seed, all with the same init (per seed), data budget, steps,
batch and lr (``distill_plugin/demo/quality.py``, methods in ``distill_plugin/demo/methods.py``).
Prints and writes (``OUT/results.md``, ``OUT/results.json``) mean ± standard error over the seeds of
held-out exact match, KL(teacher ‖ student), the fraction of the SFT→teacher gap closed, and wall time.

    python benchmarks/bench_quality.py                       # CPU scale: seeds 1-5, the regime's rows
    python benchmarks/bench_quality.py --regime all          # every regime in turn, one teacher per task
    python benchmarks/bench_quality.py --tune                # the sweep on tuning seed 0 (valid split)
    python benchmarks/bench_quality.py --budget              # SFT and KD at ½× and 2× steps, seed 0
    python benchmarks/bench_quality.py --quick --method sft --method fkl    # a minute or two
    python benchmarks/bench_quality.py --method uld_hybrid   # cross-tokenizer: + its baseline sft_b
    python benchmarks/bench_quality.py --device cuda         # larger scale on a GPU machine
    python benchmarks/bench_quality.py --regime uncertain --method fkl --method topk64 --method adaptive \
        --method sampled --against fkl --against topk64     # the offline stores, paired with online KD and top-64

Settings are chosen on the tuning seed (``--tune``: scored on a validation split disjoint from the
held-out one) and then used unchanged on the evaluation seeds; ``--set KEY=VALUE`` overrides one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (read when torch loads, below). The teacher trains
# with two threads; on a 2-core machine shared with other work, spinning workers made 30 of its steps
# take 63 s against 12 s. The schedule of the work, and so every number, is unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality.methods import METHODS  # noqa: E402
from benchmarks.quality.regimes import REGIMES  # noqa: E402
from benchmarks.quality.runner import run  # noqa: E402
from benchmarks.quality.settings import EVAL_SEEDS, GPU, QUICK_SEEDS, TUNING_SEED, Settings, with_overrides  # noqa: E402


def tune_rows(s: Settings) -> dict[str, tuple[str, Settings]]:
    """The sweep on the tuning seed: logit-KD temperature and CE weight (forward KL; the choice is used
    by every logit method) and the hidden-state weight, next to SFT."""
    rows = {"sft": ("sft", s)}
    for t, kd, ce in ((1.0, 0.5, 0.5), (2.0, 0.5, 0.5), (1.0, 1.0, 0.0)):
        rows[f"fkl_T{t:g}_kd{kd:g}_ce{ce:g}"] = ("fkl", replace(s, temperature=t, kd_weight=kd, ce_weight=ce))
    for w in (1.0, 4.0):
        rows[f"hidden_w{w:g}"] = ("hidden", replace(s, hidden_weight=w))
    return rows


def budget_rows(s: Settings) -> dict[str, tuple[str, Settings]]:
    """What the SFT/KD gap depends on: SFT and forward-KL KD at ½× and 2× the student steps."""
    rows = {}
    for factor, tag in ((0.5, "half"), (2.0, "double")):
        steps = int(s.student_steps * factor)
        rows[f"sft_{tag}_steps"] = ("sft", replace(s, student_steps=steps))
        rows[f"fkl_{tag}_steps"] = ("fkl", replace(s, student_steps=steps))
    return rows


def method_rows(methods: list[str], s: Settings) -> dict[str, tuple[str, Settings]]:
    """One row per method, preceded by the baselines they need and were not asked for: the gap
    closed is measured from each method's baseline (plain SFT on its student's tokenizer)."""
    missing = [METHODS[m].baseline for m in methods if METHODS[m].baseline not in methods]
    return {m: (m, s) for m in dict.fromkeys(missing + methods)}


def run_all(out: Path, a: argparse.Namespace) -> None:
    """Every regime's rows in turn (``REGIMES``' order), each in ``out/<regime>``; a regime whose teacher
    an earlier one trained copies it (``runner.build_shared``). Prints and writes (``out/wall.json``)
    each regime's wall seconds and the total."""
    from distill_plugin.demo.run import claim_output

    out = claim_output(out, ".bench_quality", "benchmarks/bench_quality.py")
    seeds = a.seed or list(QUICK_SEEDS if a.quick else EVAL_SEEDS)
    start, walls = time.perf_counter(), {}
    for regime in REGIMES.values():
        s = with_overrides(regime.quick if a.quick else regime.settings, a.set)
        began = time.perf_counter()
        run(out / regime.name, regime, s, method_rows(list(regime.methods), s), seeds, jobs=a.jobs,
            threads=a.threads, donors=tuple(out / name / "shared" for name in walls))
        walls[regime.name] = round(time.perf_counter() - began, 1)
    total = round(time.perf_counter() - start, 1)
    (out / "wall.json").write_text(json.dumps({"regimes": walls, "total": total, "seeds": seeds}, indent=2))
    print("wall time: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in walls.items()) + f"; total {total:.0f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regime", default="certain", choices=[*REGIMES, "all"],
                   help="the task and students (default certain); all: every regime in turn")
    p.add_argument("--out", type=Path, default=None,
                   help="default bench_quality_out (certain), bench_quality_<regime> or bench_quality_all")
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's run)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: the larger GPU scale")
    p.add_argument("--seed", type=int, action="append", help=f"repeatable; default {EVAL_SEEDS} ({QUICK_SEEDS} with --quick)")
    p.add_argument("--method", action="append", choices=list(METHODS), help="repeatable; default: the regime's rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--against", action="append", default=[], choices=list(METHODS),
                   help="repeatable: also pair every row with this row, seed by seed (it must be a --method)")
    p.add_argument("--tune", action="store_true", help=f"run the sweep on tuning seed {TUNING_SEED}, valid split")
    p.add_argument("--budget", action="store_true", help=f"SFT and KD at ½× and 2× steps on seed {TUNING_SEED}, valid split")
    p.add_argument("--jobs", type=int, default=2, help="students trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per student")
    a = p.parse_args()
    if a.regime == "all":
        if a.method or a.against or a.tune or a.budget or a.device == "cuda":
            raise SystemExit("--regime all runs each regime's own rows at the CPU scale: "
                             "no --method, --against, --tune, --budget or --device cuda")
        run_all(a.out or Path("bench_quality_all"), a)
        return
    regime = REGIMES[a.regime]
    if a.device == "cuda" and regime.name != "certain":
        raise SystemExit("--device cuda: only the certain regime has a GPU scale")
    s = with_overrides(regime.quick if a.quick else GPU if a.device == "cuda" else regime.settings, a.set)
    out = a.out or Path("bench_quality_out" if regime.name == "certain" else f"bench_quality_{regime.name}")
    if a.tune or a.budget:
        rows = {**(tune_rows(s) if a.tune else {"sft": ("sft", s)}), **(budget_rows(s) if a.budget else {})}
        seeds, split = a.seed or [TUNING_SEED], "valid"
    else:
        rows = method_rows(a.method or list(regime.methods), s)  # no --method: the regime's rows
        seeds, split = a.seed or list(QUICK_SEEDS if a.quick else EVAL_SEEDS), "heldout"
    if TUNING_SEED in seeds and split == "heldout":  # --tune/--budget score seed 0 on the valid split by design
        print(f"note: seed {TUNING_SEED} is the tuning seed; its rows are not an independent evaluation")
    stem = "_".join(["results"] + [k for k in ("tune", "budget") if getattr(a, k)])
    run(out, regime, s, rows, seeds, split=split, jobs=a.jobs, threads=a.threads, device=a.device, stem=stem,
        against=tuple(a.against))


if __name__ == "__main__":
    main()
