"""The embedded demo's glue: a source with many right answers, one teacher, SFT vs KD students, the table.

    python -m distill_plugin.demo [--out demo_out] [--quick] [--seed N ...]

The task (``source.py``): write a sequence of the order-2 Markov source, whose right continuation is
a distribution known in closed form. A label is one draw of it; a teacher trained on many draws
knows the distribution. That is where distillation pays, and the demo measures by how much.

1. ``OUT/shared`` (once): the tiny tokenizer, the teacher's sample (``n_teacher_train`` draws), the
   held-out draws, and the teacher, trained on its sample with a plain torch loop
   (``core.train_causal_lm``);
2. per seed ``N`` (``OUT/seed_N``): the student's own small sample (``n_train`` draws, seeded by
   ``N``), a student init (seeded by ``N``) and two recipes (``recipe.py``): SFT (no plugin) and
   forward-KL logit KD (the plugin, the shared teacher), identical but for the ``distill:`` block;
3. every seed's two students through ``python -m axolotl.cli.train``, two at a time, forked from one
   process that imported Axolotl once (``prefork.py``);
4. each model scored on the held-out draws (``source_scores.py``): the exact KL(source ‖ model) per
   letter, KL(teacher ‖ model), and the validity, entropy ratio and coverage of 200 sampled answers;
   ``OUT/seed_N/results.json`` per seed, and the seeds' summary (mean ± standard error, the paired
   KD − SFT difference per seed and the gap closed; ``seeds.py``) in ``OUT/results.json``.
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
class Budget:
    """The teacher's and the students' sizes and training budgets, shared by the demo's settings and
    the quality benchmark's (each sets its own defaults)."""

    # teacher: trained once with a torch loop (``core.train_causal_lm``)
    teacher_hidden: int = 96
    teacher_layers: int = 3
    teacher_steps: int = 400
    teacher_batch: int = 32
    teacher_lr: float = 3e-3
    # students: through axolotl.cli.train, the same budget for every student of a comparison
    student_hidden: int = 48
    student_layers: int = 2
    student_steps: int = 300
    student_batch: int = 16
    student_lr: float = 3e-3


@dataclass(frozen=True)
class Settings(Budget):
    source_length: int = 24
    n_teacher_train: int = 20_000  # the teacher's sample of the source
    n_train: int = 200  # each student's sample: one label per position
    n_heldout: int = 200
    samples: int = 200  # answers each model samples for validity, entropy ratio and coverage
    # KD settings (forward KL on the full vocabulary)
    divergence: str = "forward_kl"
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    seed: int = 0


DEFAULT_SEEDS, QUICK_SEEDS = (0, 1, 2, 3), (0, 1)
QUICK = Settings(
    source_length=8, n_teacher_train=256, n_train=32, n_heldout=16, samples=16, teacher_hidden=48, teacher_layers=2,
    teacher_steps=30, teacher_batch=16, student_hidden=32, student_layers=1, student_steps=10, student_batch=8,
)
TEACHER_INIT_SEED = 1


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


def claim_output(out: Path, marker: str = ".distill_demo", owner: str = "python -m distill_plugin.demo") -> Path:
    """``out`` resolved and marked as ``owner``'s output; refuse a non-empty folder ``owner`` did not write."""
    out = out.resolve()
    mark = out / marker
    if out.exists() and any(out.iterdir()) and not mark.exists():
        raise SystemExit(f"{out} is not empty and is not a previous output of {owner}; pass --out with a new or "
                         "empty directory")
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"output of {owner}; its seed_N sub-folders are recreated on each run\n")
    return out


def build_shared(out: Path, s: Settings, console) -> dict:
    """``out``: the tokenizer, the teacher's sample and the held-out draws, and the trained teacher."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..jsonl import write_jsonl_atomic
    from ..testing.tiny import build_model, build_tokenizer
    from . import core
    from .source import MarkovSource

    source = MarkovSource(length=s.source_length)
    teacher_rows, heldout = source.rows(s.n_teacher_train, seed=40_000), source.rows(s.n_heldout, seed=10_000)
    write_jsonl_atomic(out / "data" / "teacher_train.jsonl", teacher_rows)
    write_jsonl_atomic(out / "data" / "heldout.jsonl", heldout)
    tok = build_tokenizer(out / "tokenizer")
    teacher = build_model(None, tok, hidden_size=s.teacher_hidden, num_layers=s.teacher_layers, num_heads=4,
                          seed=TEACHER_INIT_SEED)
    examples = [core.encode(tok, r) for r in teacher_rows]
    with Progress(TextColumn("teacher"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("teacher", total=s.teacher_steps, loss="-")
        with core.Timer() as timer:
            core.train_causal_lm(teacher, examples, tok.pad_token_id, s.teacher_steps, s.teacher_batch, s.teacher_lr,
                                 warmup=max(1, s.teacher_steps // 10),
                                 on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=f"{loss:.4f}"))
    teacher.save_pretrained(str(out / "teacher"))
    tok.save_pretrained(str(out / "teacher"))
    console.print(f"teacher: {len(teacher_rows):,} draws of the source, trained in {timer.seconds:.0f}s "
                  f"-> {out / 'teacher'}")
    return {"teacher_seconds": round(timer.seconds, 1), "params": core.count_params(teacher)}


def prepare_seed(out: Path, shared: Path, s: Settings) -> dict[str, Path]:
    """``out`` (one seed): the student's sample, its init and the two recipes; returns the recipes."""
    from transformers import AutoTokenizer

    from ..jsonl import write_jsonl_atomic
    from ..testing.tiny import build_model
    from .recipe import student_recipes
    from .source import MarkovSource

    out = fresh(out)
    write_jsonl_atomic(out / "data" / "train.jsonl", MarkovSource(length=s.source_length).rows(s.n_train, seed=s.seed))
    build_model(out / "student_init", AutoTokenizer.from_pretrained(str(shared / "tokenizer")),
                hidden_size=s.student_hidden, num_layers=s.student_layers, num_heads=4, seed=2 + s.seed)
    return student_recipes(out, s, teacher=shared / "teacher")


class Scorer:
    """Every model on the held-out draws: ``source_scores`` and KL(teacher ‖ model) (``teacher_fit``)."""

    def __init__(self, shared: Path, s: Settings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from . import core
        from .source import MarkovSource

        self.s, self.source = s, MarkovSource(length=s.source_length)
        self.load = lambda path: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(str(shared / "tokenizer"))
        self.rows = [json.loads(line) for line in (shared / "data" / "heldout.jsonl").read_text().splitlines()]
        self.sequences = [(e.prompt_ids, e.target_ids) for e in (core.encode(self.tok, r) for r in self.rows)]
        self.reference = [r["answer"] for r in self.source.rows(s.samples, seed=30_000)]
        self.teacher = self.load(shared / "teacher")

    def score(self, path: Path | None) -> dict:
        from ..evaluation import teacher_fit
        from . import core
        from .source_scores import source_scores

        model = self.teacher if path is None else self.load(path)
        scores = source_scores(model, self.tok, self.source, self.rows, self.reference, samples=self.s.samples)
        fit = teacher_fit(model, self.sequences, None if path is None else self.teacher, pad_id=self.tok.pad_token_id,
                          batch_size=64)
        return {**scores, "kl_to_teacher": fit.kl, "heldout_ce": fit.student_ce, "params": core.count_params(model)}


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
    """The demo (module docstring): every seed under ``out/seed_N``, the summary in ``out/results.json``."""
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from .seeds import summarise, summary_table

    s = QUICK if quick else Settings()
    s = replace(s, **{k: v for k, v in dict(student_steps=student_steps, temperature=temperature, kd_weight=kd_weight,
                                            ce_weight=ce_weight).items() if v is not None})
    seeds = list(seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS))
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seed values repeat: {seeds}")
    console = Console()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    out = claim_output(out)
    t0 = time.perf_counter()
    console.rule("[bold]1. the source, the teacher (torch loop)")
    shared = fresh(out / "shared")
    built = build_shared(shared, s, console)
    console.rule(f"[bold]2. {len(seeds)} seeds × SFT and KD students through axolotl.cli.train, two at a time")
    recipes = {}
    for seed in seeds:
        for name, path in prepare_seed(out / f"seed_{seed}", shared, replace(s, seed=seed)).items():
            recipes[f"s{seed}_{name}"] = path
    seconds = train_students(out, recipes, s.student_steps, threads, console, jobs=2)
    console.rule("[bold]3. held-out scores")
    scorer = Scorer(shared, s)
    with console.status("scoring the teacher"):
        teacher = {"model": "teacher", **scorer.score(None), "train_steps": s.teacher_steps,
                   "train_seconds": built["teacher_seconds"]}
    runs = []
    for seed in seeds:
        rows = [teacher]
        for name, label in (("sft", "student SFT"), ("kd", "student KD")):
            with console.status(f"scoring seed {seed}'s {label}"):
                rows.append({"model": label, **scorer.score(out / f"seed_{seed}" / name), "train_steps": s.student_steps,
                             "train_seconds": round(seconds[f"s{seed}_{name}"], 1)})
        result = {"settings": asdict(replace(s, seed=seed)), "threads": threads, "rows": rows,
                  "paths": {"teacher": str(shared / "teacher"), "sft": str(out / f"seed_{seed}" / "sft"),
                            "kd": str(out / f"seed_{seed}" / "kd")}}
        (out / f"seed_{seed}" / "results.json").write_text(json.dumps(result, indent=2))
        runs.append(result)
    summary = summarise(runs)
    wall = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "summary": summary, "runs": runs,
                                                  "wall_seconds": wall}, indent=2))
    console.print(summary_table(summary, runs))
    console.print(f"wall time {wall:.0f}s; per-seed results -> {out}/seed_N/results.json; summary -> {out / 'results.json'}")
    return summary
