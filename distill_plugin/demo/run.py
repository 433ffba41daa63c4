"""The embedded demo's glue: data, teacher, two ``axolotl.cli.train`` runs (SFT and KD), the table.

    python -m distill_plugin.demo [--out demo_out] [--quick] [--seed N ...]

For each seed (a different train/held-out split and data order; default seeds 0-3), in ``OUT/seed_N``:

1. writes the synthetic addition data (train / held-out, disjoint by problem id) and a tiny tokenizer;
2. trains a tiny teacher with a plain torch loop (``core.train_causal_lm``) and saves it;
3. writes two recipes (``recipe.py``, built in code): SFT (no plugin) and logit KD (plugin, the
   trained teacher), with the same student init, data, steps, lr and seed, and runs both with
   ``python -m axolotl.cli.train`` (concurrently, one thread each, forked from one process that imported
   Axolotl once: ``prefork.py``);
4. evaluates teacher, SFT student and KD student on the held-out problems (greedy exact match,
   assistant-token CE, KL to the teacher), prints a table and writes ``results.json``.

Then the seeds' summary (mean ± sample standard deviation, min–max; ``seeds.py``) is printed and
written to ``OUT/results.json``: the numbers README and docs/demo.md quote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SUBPROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class Settings:
    n_train: int = 3000
    n_heldout: int = 200
    # teacher: trained here with a torch loop
    teacher_hidden: int = 96
    teacher_layers: int = 3
    teacher_steps: int = 400
    teacher_batch: int = 32
    teacher_lr: float = 3e-3
    # student: trained twice through axolotl.cli.train, identical but for the distill block
    student_hidden: int = 48
    student_layers: int = 2
    student_steps: int = 600
    student_batch: int = 16
    student_lr: float = 3e-3
    # KD settings (forward KL on the full vocabulary)
    divergence: str = "forward_kl"
    temperature: float = 1.0
    kd_weight: float = 0.5
    ce_weight: float = 0.5
    seed: int = 0


DEFAULT_SEEDS, QUICK_SEEDS = (0, 1, 2, 3), (0, 1)
QUICK = Settings(
    n_train=256, n_heldout=32, teacher_hidden=48, teacher_layers=2, teacher_steps=30, teacher_batch=16,
    student_hidden=32, student_layers=1, student_steps=10, student_batch=8,
)


# ---------------------------------------------------------------------------------------------- data


def write_data(out: Path, s: Settings) -> tuple[list[dict], list[dict]]:
    from ..jsonl import write_jsonl_atomic
    from ..testing.addition import make_split

    heldout = make_split(s.n_heldout, seed=10_000 + s.seed)
    train = make_split(s.n_train, seed=s.seed, exclude={r["id"] for r in heldout})
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}, "held-out split overlaps train"
    write_jsonl_atomic(out / "data" / "train.jsonl", train)
    write_jsonl_atomic(out / "data" / "heldout.jsonl", heldout)
    return train, heldout


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a subprocess's torch (OpenMP / MKL) threads."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


LOSS_LINE = re.compile(r"\{'loss': ")


def train_students(out: Path, recipes: dict[str, Path], steps: int | dict[str, int], threads: int, console,
                   jobs: int | None = None, env: dict | None = None,
                   on_done: Callable[[str, float], None] | None = None, prefork: bool = True) -> dict[str, float]:
    """Run the recipes through ``axolotl.cli.train``, at most ``jobs`` at once (default: all), in the
    order given, with a progress bar per run (``steps``: its max_steps, one for all or per recipe) read
    from its log (``out/logs/<name>.log``); returns each run's wall seconds. ``on_done(name, seconds)``
    is called for each run that ends, after the next runs have been started (so it works beside them).
    Each run is ``python -m axolotl.cli.train RECIPE`` forked from one process that imported Axolotl
    once (``prefork.py``: ~28 s less per run than a new process on a 2-core machine, the same weights);
    ``prefork=False``: a new process each (the GPU scale: CUDA must not meet a fork)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .prefork import Prefork

    env = {**os.environ, **SUBPROCESS_ENV, **thread_env(threads), **(env or {})}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    waiting, procs, logs, started, seconds = list(recipes), {}, {}, {}, {}
    jobs = jobs or len(recipes)
    steps = steps if isinstance(steps, dict) else dict.fromkeys(recipes, steps)

    def launch() -> None:
        while waiting and len(procs) < jobs:
            name = waiting.pop(0)
            logs[name] = out / "logs" / f"{name}.log"
            started[name] = time.perf_counter()
            argv = ["axolotl.cli.train", str(recipes[name])]
            if server is not None:
                procs[name] = server.start(name, argv, logs[name], out)
                continue
            with logs[name].open("w") as handle:
                procs[name] = subprocess.Popen([sys.executable, "-m", *argv], cwd=out, env=env, stdout=handle,
                                               stderr=subprocess.STDOUT)

    with ExitStack() as stack:
        server = None
        if prefork:
            with console.status("importing Axolotl once for every student (prefork server)"):
                server = stack.enter_context(Prefork(env, out, out / "logs" / "prefork.log"))
        progress = stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                                TimeElapsedColumn(), console=console))
        tasks = {name: progress.add_task(f"axolotl.cli.train {name.upper():>3}", total=steps[name]) for name in recipes}
        try:
            while waiting or procs:
                launch()
                time.sleep(0.25)
                ended = []
                for name in list(procs):
                    done = len(LOSS_LINE.findall(logs[name].read_text(errors="replace")))
                    progress.update(tasks[name], completed=min(done, steps[name]))
                    code = procs[name].poll()
                    if code is None:
                        continue
                    seconds[name] = time.perf_counter() - started[name]
                    del procs[name]
                    if code != 0:
                        tail = logs[name].read_text(errors="replace")[-4000:]
                        raise RuntimeError(f"axolotl.cli.train {name} failed ({code}); log {logs[name]}:\n{tail}")
                    ended.append(name)
                if on_done is not None and ended:
                    launch()
                    for name in ended:
                        on_done(name, seconds[name])
        finally:  # an error here or in on_done: stop the runs still going
            for proc in procs.values():
                proc.terminate()
    return seconds


# ---------------------------------------------------------------------------------------------- main


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def claim_output(out: Path) -> Path:
    """``out`` resolved and marked as the demo's; refuse a non-empty folder that is not a demo output."""
    out = out.resolve()
    marker = out / ".distill_demo"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise SystemExit(f"{out} is not empty and is not a previous demo output; pass --out with a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("output of python -m distill_plugin.demo; its seed_N sub-folders are recreated on each run\n")
    return out


def run_demo(out: Path, s: Settings, threads: int = 1, console=None) -> dict:
    """One seed of the demo in a fresh folder ``out``; returns (and writes) its ``results.json``."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ..testing.tiny import build_model, build_tokenizer
    from . import core
    from .recipe import student_recipes

    console = console or Console()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    out = fresh(out.resolve())
    out.mkdir(parents=True)
    t0 = time.perf_counter()

    console.rule("[bold]1. data, tokenizer, models")
    train, heldout = write_data(out, s)
    tok = build_tokenizer(out / "tokenizer")
    teacher = build_model(None, tok, hidden_size=s.teacher_hidden, num_layers=s.teacher_layers, num_heads=4, seed=1)
    student = build_model(out / "student_init", tok, hidden_size=s.student_hidden, num_layers=s.student_layers,
                          num_heads=4, seed=2)
    params = {"teacher": core.count_params(teacher), "student": core.count_params(student)}
    console.print(f"train {len(train)} / held-out {len(heldout)} problems (disjoint); tokenizer {len(tok)} tokens; "
                  f"teacher {params['teacher']:,} params, student {params['student']:,} params")

    console.rule("[bold]2. teacher (torch loop)")
    train_enc = [core.encode(tok, r) for r in train]
    heldout_enc = [core.encode(tok, r) for r in heldout]
    with Progress(TextColumn("teacher"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("teacher", total=s.teacher_steps, loss="-")
        with core.Timer() as teacher_time:
            core.train_causal_lm(
                teacher, train_enc, tok.pad_token_id, s.teacher_steps, s.teacher_batch, s.teacher_lr, seed=s.seed,
                warmup=max(1, s.teacher_steps // 10),
                on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=f"{loss:.4f}"),
            )
    teacher.save_pretrained(str(out / "teacher"))
    tok.save_pretrained(str(out / "teacher"))
    console.print(f"teacher trained in {teacher_time.seconds:.0f}s -> {out / 'teacher'}")

    console.rule("[bold]3. students: SFT and KD through axolotl.cli.train")
    recipes = student_recipes(out, s)
    console.print(f"recipes: {recipes['sft']}  {recipes['kd']}")
    student_seconds = train_students(out, recipes, s.student_steps, threads, console)

    console.rule("[bold]4. held-out evaluation")
    rows = []
    models = {"teacher": teacher}
    for name in ("sft", "kd"):
        models[name] = AutoModelForCausalLM.from_pretrained(str(out / name), dtype=torch.float32)
    labels = {"teacher": "teacher", "sft": "student SFT", "kd": "student KD"}
    for name, model in models.items():
        with console.status(f"evaluating {labels[name]}"):
            acc, texts = core.exact_match(model, tok, heldout_enc)
            losses = core.heldout_losses(model, heldout_enc, tok.pad_token_id, teacher=None if name == "teacher" else teacher)
        rows.append({
            "model": labels[name],
            "params": core.count_params(model),
            "train_steps": s.teacher_steps if name == "teacher" else s.student_steps,
            "train_seconds": round(teacher_time.seconds if name == "teacher" else student_seconds[name], 1),
            "exact_match": acc,
            "heldout_ce": losses["ce"],
            "kl_to_teacher": losses.get("kl_to_teacher"),
            "samples": [{"prompt": heldout[i]["messages"][0]["content"], "output": texts[i]} for i in range(3)],
        })
    results = {
        "settings": asdict(s),
        "threads": threads,
        "heldout_tokens": sum(len(e.target_ids) for e in heldout_enc),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "paths": {"teacher": str(out / "teacher"), "sft": str(out / "sft"), "kd": str(out / "kd"),
                  "recipes": {k: str(v) for k, v in recipes.items()}},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    console.print(results_table(results))
    console.print(f"wall time {results['wall_seconds']:.0f}s; results -> {out / 'results.json'}")
    return results


def results_table(results: dict):
    from rich.table import Table

    s = results["settings"]
    table = Table(title=f"held-out two-digit addition ({s['n_heldout']} problems, unseen in training)")
    for col in ("model", "params", "steps", "train s", "exact match", "CE", "KL(T‖S)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results["rows"]:
        kl = "-" if r["kl_to_teacher"] is None else f"{r['kl_to_teacher']:.4f}"
        table.add_row(r["model"], f"{r['params']:,}", str(r["train_steps"]), f"{r['train_seconds']:.0f}",
                      f"{100 * r['exact_match']:.1f}%", f"{r['heldout_ce']:.4f}", kl)
    return table


def main_cli(
    out: Path = Path("demo_out"),
    quick: bool = False,
    threads: int = 1,
    student_steps: int | None = None,
    temperature: float | None = None,
    kd_weight: float | None = None,
    ce_weight: float | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """Run the demo once per seed under ``out/seed_N``, then print and write the seeds' summary."""
    from rich.console import Console

    from .seeds import summarise, summary_table

    s = QUICK if quick else Settings()
    overrides = {k: v for k, v in dict(student_steps=student_steps, temperature=temperature, kd_weight=kd_weight,
                                      ce_weight=ce_weight).items() if v is not None}
    seeds = list(seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS))
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seed values repeat: {seeds}")
    console = Console()
    out = claim_output(out)
    runs = []
    for seed in seeds:
        console.rule(f"[bold]seed {seed} ({len(runs) + 1} of {len(seeds)})", characters="=")
        runs.append(run_demo(out / f"seed_{seed}", replace(s, seed=seed, **overrides), threads=threads, console=console))
    summary = summarise(runs)
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "summary": summary, "runs": runs}, indent=2))
    console.print(summary_table(summary, runs))
    console.print(f"per-seed results -> {out}/seed_N/results.json; summary -> {out / 'results.json'}")
    return summary
