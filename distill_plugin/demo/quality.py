"""The quality benchmark's glue: shared teacher and data, every method × seed through ``axolotl.cli.train``.

    python benchmarks/bench_quality.py [--quick] [--seed N ...] [--method NAME ...] [--tune]

1. ``OUT/shared`` (built once, reused while its settings match): the addition data (``digits``-digit,
   train / valid / held-out, disjoint by problem id), the tiny tokenizer, and a teacher trained with
   the demo's torch loop (``core.train_causal_lm``); then each method's ``prepare`` (``methods.py``).
2. Per seed ``N`` (``OUT/seed_N``): a student init per (size, student tokenizer) (random, seeded by
   ``N``) and one recipe per method (``recipe.student_recipe``: same init, data budget, steps, batch,
   lr and Axolotl seed ``N``; only the data file and the ``distill:`` block differ); all recipes of all
   seeds run through ``python -m axolotl.cli.train`` (forked from one process that imported Axolotl
   once, ``prefork.py``), ``jobs`` at a time, in one queue. Students of one tokenizer and data file
   share one tokenisation (``OUT/prepared``, ``shared_preparation``). A run whose recipe and training
   rows equal an earlier run's of its seed is not trained: it takes that run's student and scores
   (``reuse.same_students``; seq_kd when the teacher's trajectories are the ground truth).
3. Every student and the teacher are scored on the held-out split (``valid`` when tuning), each with
   its own tokenizer and chat template: greedy exact match of the integer after ``</think>``, CE on
   the ground-truth assistant tokens and token-mean KL(teacher ‖ student) (T = 1; only for students on
   the teacher's tokenizer: across vocabularies a token-level KL is undefined, reported as ``None``/–).
4. Per method over the seeds (``quality_table``, ``seeds.spread``): mean ± standard error of exact
   match, KL, the fraction of the baseline→teacher gap closed (per seed: ``(EM − EM_base) /
   (EM_teacher − EM_base)``, with the same seed's student of the method's ``baseline``: SFT on the
   same tokenizer), and the wall time of one student's ``axolotl.cli.train`` run (plus the shared
   prepare step, once). Printed, and written to ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .methods import METHODS, TOKENIZERS, Shared, prepare_all
from .recipe import student_recipe
from .reuse import same_students
from .quality_table import markdown, summarise
from .run import fresh, train_students


@dataclass(frozen=True)
class Settings:
    digits: int = 3
    n_train: int = 2000
    n_valid: int = 200
    n_heldout: int = 200
    # teacher: trained once with the demo's torch loop, shared by every method and seed
    teacher_hidden: int = 96
    teacher_layers: int = 3
    teacher_steps: int = 700
    teacher_batch: int = 32
    teacher_lr: float = 3e-3
    # students: one per method and seed through axolotl.cli.train, the same budget for all
    student_hidden: int = 48
    student_layers: int = 2
    student_steps: int = 500
    student_batch: int = 16
    student_lr: float = 3e-3
    pad_to_multiple_of: int = 8  # Axolotl's default 64 pads these ~100-token rows to 128: 16 % more CPU per step
    # method settings (chosen on the tuning seed, see --tune)
    temperature: float = 1.0
    kd_weight: float = 1.0  # --tune on seed 0: (T 1, kd 1, ce 0) 39.0% vs (1, .5, .5) 11.5%, (2, .5, .5) 2.0%
    ce_weight: float = 0.0
    hidden_weight: float = 1.0  # --tune on seed 0: weight 1 16.0% vs weight 4 5.5%
    # cross-tokenizer rows: the recipe's weights, from a five-seed sweep (docs/quality.md). They need CE:
    # neither ULD nor the next-byte KL says which of the student's own tokens writes the text
    cross_kd_weight: float = 0.1
    cross_ce_weight: float = 1.0
    cross_uld_weight: float = 1.0  # hybrid: ULD against the next-byte term (``distill.uld_weight``)
    top_k: int = 16
    seqkd_samples: int = 2
    seqkd_temperature: float = 1.0
    seqkd_keep_incorrect: bool = False  # True only in QUICK: its 30-step teacher is rarely right
    seed: int = 0  # the student's: init and Axolotl seed (data order)


# The teacher and the data depend on these only (a change rebuilds OUT/shared).
SHARED_KEYS = ("digits", "n_train", "n_valid", "n_heldout", "teacher_hidden", "teacher_layers", "teacher_steps",
               "teacher_batch", "teacher_lr")
QUICK = Settings(n_train=128, n_valid=32, n_heldout=32, teacher_hidden=48, teacher_layers=2, teacher_steps=30,
                 teacher_batch=16, student_hidden=32, student_layers=1, student_steps=8, student_batch=8, top_k=8,
                 seqkd_samples=1, seqkd_keep_incorrect=True)
# --device cuda: a larger scale (not run in this repository's CI: no GPU machine there).
GPU = Settings(digits=4, n_train=20000, n_valid=500, n_heldout=1000, teacher_hidden=384, teacher_layers=6,
               teacher_steps=4000, teacher_batch=64, student_hidden=96, student_layers=2, student_steps=3000,
               student_batch=32)
TUNING_SEED, EVAL_SEEDS, QUICK_SEEDS = 0, (1, 2, 3, 4, 5), (1,)
SPLIT_SEED, TEACHER_INIT_SEED = 0, 1


def with_overrides(s: Settings, pairs: list[str]) -> Settings:
    """``key=value`` pairs (``--set``) applied with each field's own type."""
    types = {f.name: type(getattr(s, f.name)) for f in fields(s)}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        values[key] = value.lower() in ("1", "true", "yes") if types[key] is bool else types[key](value)
    return replace(s, **values)


# ---------------------------------------------------------------------------------------------- shared


def train_teacher(sh: Shared, s: Settings, console, out: Path | None = None) -> float:
    """Train the teacher (the demo's loop, ``core.train_causal_lm``) on the training split; save it to
    ``out`` (default ``sh.teacher``) with the tokenizer; return its seconds."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoTokenizer

    from ..testing.tiny import build_model
    from . import core

    tok = AutoTokenizer.from_pretrained(str(sh.tokenizer))
    train = [core.encode(tok, json.loads(line)) for line in sh.data("train").read_text().splitlines()]
    teacher = build_model(None, tok, hidden_size=s.teacher_hidden, num_layers=s.teacher_layers, num_heads=4,
                          seed=TEACHER_INIT_SEED).to(torch.device(sh.device))
    with Progress(TextColumn("teacher"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("teacher", total=s.teacher_steps, loss="-")
        with core.Timer() as timer:
            core.train_causal_lm(teacher, train, tok.pad_token_id, s.teacher_steps, s.teacher_batch, s.teacher_lr,
                                 seed=SPLIT_SEED, warmup=max(1, s.teacher_steps // 10),
                                 on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=f"{loss:.4f}"))
    out = out or sh.teacher
    teacher.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return timer.seconds


def build_shared(sh: Shared, s: Settings, console) -> dict:
    """Data, tokenizer and teacher under ``sh.root``, reused when ``manifest.json`` has the same settings."""
    from ..jsonl import write_jsonl_atomic
    from ..testing.tiny import build_tokenizer
    from ..testing.addition import make_split

    key = {k: getattr(s, k) for k in SHARED_KEYS}
    manifest = sh.root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["settings"] == key:
        built = json.loads(manifest.read_text())
        console.print(f"reusing {sh.root} (teacher trained in {built['teacher_seconds']:.0f}s)")
        return built
    fresh(sh.root).mkdir(parents=True)
    heldout = make_split(s.n_heldout, seed=10_000 + SPLIT_SEED, digits=s.digits, r1_layout=True)
    valid = make_split(s.n_valid, seed=20_000 + SPLIT_SEED, exclude={r["id"] for r in heldout}, digits=s.digits,
                       r1_layout=True)
    train = make_split(s.n_train, seed=SPLIT_SEED, exclude={r["id"] for r in heldout + valid}, digits=s.digits,
                       r1_layout=True)
    for name, rows in (("train", train), ("valid", valid), ("heldout", heldout)):
        write_jsonl_atomic(sh.data(name), rows)
    build_tokenizer(sh.tokenizer)
    built = {"settings": key, "teacher_seconds": train_teacher(sh, s, console)}
    manifest.write_text(json.dumps(built))
    console.print(f"teacher trained in {built['teacher_seconds']:.0f}s -> {sh.teacher}")
    return built


# ---------------------------------------------------------------------------------------------- students


def student_runs(out: Path, sh: Shared, rows: dict[str, tuple[str, Settings]], seed: int) -> dict:
    """Write the seed's student inits (one per size and student tokenizer, the same for every row that
    shares them) and one recipe per row; returns ``{run: (row, recipe, steps)}``. Every recipe names
    its tokenizer's folder (``student_tokenizer``) and ``OUT/prepared``: one tokenised dataset per
    (tokenizer, data file), shared by every seed and row (``shared_preparation``)."""
    from ..testing.tiny import build_model

    runs = {}
    sdir = out / f"seed_{seed}"
    fresh(sdir).mkdir(parents=True)
    for row, (method, s) in rows.items():
        m = METHODS[method]
        init = sdir / f"student_init_{s.student_hidden}x{s.student_layers}_{m.tokenizer}"
        if not init.exists():
            vocab = TOKENIZERS[m.tokenizer]
            build_model(init, vocab.build(), hidden_size=s.student_hidden, num_layers=s.student_layers,
                        num_heads=4, seed=seed, architecture=vocab.architecture)
        s = replace(s, seed=seed)
        recipe = student_recipe(sdir / "recipes" / f"{row}.yml", s, base_model=init, data=m.data(sh),
                                output_dir=sdir / row, prepared=out / "prepared", distill=m.distill(sh, s),
                                tokenizer=student_tokenizer(out, m.tokenizer), pad_to_multiple_of=s.pad_to_multiple_of)
        runs[f"s{seed}_{row}"] = (row, recipe, s.student_steps)
    return runs


def student_tokenizer(out: Path, key: str) -> Path:
    """``OUT/tokenizers/<key>``: tokenizer ``key`` of ``methods.TOKENIZERS`` (the one the seeds' inits
    hold), saved once per run. Axolotl keys a prepared dataset on the tokenizer's *path*
    (``generate_dataset_hash_from_config``), so naming this folder rather than each seed's init lets
    every student of one tokenizer and data file load one tokenisation."""
    path = out / "tokenizers" / key
    if not path.exists():
        TOKENIZERS[key].build().save_pretrained(str(path))
    return path


def shared_preparation(out: Path) -> None:
    """Empty ``OUT/prepared`` and ``OUT/tokenizers`` at the start of a run: the hash does not cover the
    tokenizer's contents, so a tokenisation is never reused across runs. Within a run the first student
    of a (tokenizer, data) tokenises and saves it under Axolotl's file lock on ``dataset_prepared_path``
    (``axolotl/utils/data/lock.py``); a student started beside it waits for the lock, then loads it."""
    for name in ("prepared", "tokenizers"):
        fresh(out / name).mkdir(parents=True)


TEACHER_TOKENIZER = "a"  # the shared teacher's (Shared.tokenizer)


class Scorer:
    """Scores on one split: greedy exact match of the integer after ``</think>``, CE on the ground-truth
    completions and token-mean KL(teacher ‖ student) (``evaluation.teacher_fit``, T = 1). Each model is
    scored with its own tokenizer (prompt and completion rendered by its chat template, ``core.encode``);
    the KL needs one vocabulary on both sides, so it is ``None`` for a student on another tokenizer."""

    def __init__(self, sh: Shared, split: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.rows = [json.loads(line) for line in sh.data(split).read_text().splitlines()]
        self.load = lambda path: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(sh.device).eval()
        self.teacher = self.load(sh.teacher)
        self._encoded: dict[str, tuple] = {}
        self.encoded(TEACHER_TOKENIZER, AutoTokenizer.from_pretrained(str(sh.tokenizer)))

    def encoded(self, tokenizer: str, tok=None) -> tuple:
        """``(tokenizer object, the split encoded with it)`` for a key of ``methods.TOKENIZERS`` (built once)."""
        from . import core

        if tokenizer not in self._encoded:
            tok = tok or TOKENIZERS[tokenizer].build()
            self._encoded[tokenizer] = tok, [core.encode(tok, row) for row in self.rows]
        return self._encoded[tokenizer]

    def score(self, path: Path | None = None, tokenizer: str = TEACHER_TOKENIZER) -> dict:
        """The teacher's scores (``path=None``) or those of the student saved at ``path``, whose
        tokenizer is ``tokenizer`` (a key of ``methods.TOKENIZERS``)."""
        from ..evaluation import teacher_fit
        from . import core

        model = self.teacher if path is None else self.load(path)
        tok, examples = self.encoded(tokenizer)
        em, texts = core.exact_match(model, tok, examples)
        teacher = None if path is None or tokenizer != TEACHER_TOKENIZER else self.teacher
        fit = teacher_fit(model, [(e.prompt_ids, e.target_ids) for e in examples], teacher,
                          pad_id=tok.pad_token_id, vocab_size=len(tok), batch_size=64)
        return {"exact_match": em, "kl_to_teacher": fit.kl,
                "heldout_ce": fit.student_ce, "params": core.count_params(model), "sample": texts[0]}


def claim(out: Path) -> Path:
    """``out`` resolved; refuse a non-empty folder that this benchmark did not write."""
    out = out.resolve()
    marker = out / ".bench_quality"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise SystemExit(f"{out} is not empty and is not a previous bench_quality output; pass a new --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("output of benchmarks/bench_quality.py; seed_N folders are recreated, shared/ reused\n")
    return out


def run(out: Path, s: Settings, rows: dict[str, tuple[str, Settings]], seeds: list[int], split: str = "heldout",
        jobs: int = 2, threads: int = 1, device: str = "cpu", stem: str = "results", console=None) -> dict:
    """The benchmark (module docstring); ``rows`` maps a row name to (method, its settings). The
    students of every seed form one queue (seed by seed, ``jobs`` at a time, so no slot idles at a
    seed's end); each is scored as it ends, beside the runs still going (one thread), and the results
    so far are written to ``OUT/<stem>.json`` and ``.md`` whenever a seed is complete."""
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    console = console or Console()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, jobs * threads))
    t0 = time.perf_counter()
    baselines = baseline_rows(rows)  # before any work: a row without its baseline is refused
    out = claim(out)
    sh = Shared(out / "shared", device, threads)
    console.rule("[bold]1. shared: data, teacher, method preparation")
    built = build_shared(sh, s, console)
    methods = sorted({m for m, _ in rows.values()})
    prep = prepare_all(sh, s, methods, console, jobs=jobs)
    scorer = Scorer(sh, split)
    with console.status(f"evaluating the teacher on the {split} split"):
        teacher = scorer.score()
    console.print(f"teacher: exact match {100 * teacher['exact_match']:.1f}% on {len(scorer.rows)} {split} problems")
    results = {
        "settings": asdict(s), "seeds": [], "split": split, "split_size": len(scorer.rows), "jobs": jobs,
        "threads": threads, "device": device,
        "rows": {name: {"method": m, "label": row_label(name, m), "tokenizer": METHODS[m].tokenizer,
                        "baseline": baselines[name], "settings": asdict(rs)} for name, (m, rs) in rows.items()},
        "teacher": teacher, "teacher_seconds": built["teacher_seconds"], "prepare_seconds": prep, "runs": [],
    }
    torch.set_num_threads(max(1, threads))  # from here on, scoring runs beside `jobs` students
    shared_preparation(out)
    runs, seed_of = {}, {}
    for seed in seeds:
        for name, spec in student_runs(out, sh, rows, seed).items():
            runs[name], seed_of[name] = spec, seed
    pending = {seed: {name for name in runs if seed_of[name] == seed} for seed in seeds}
    same = same_students(runs)  # trained once: the first run of each identical (recipe, training data)
    for name, source in same.items():
        console.print(f"{name}: the same recipe and training data as {source}: its student and scores are {source}'s")

    def score(name: str, seconds: float) -> None:
        """Score a student as soon as it ends (and the runs that reuse it); when its seed is complete,
        write the results so far."""
        seed, row = seed_of[name], runs[name][0]
        tokenizer = METHODS[rows[row][0]].tokenizer
        scores = scorer.score(out / f"seed_{seed}" / row, tokenizer)
        assert all(math.isfinite(scores[k]) for k in ("exact_match", "heldout_ce")), scores
        assert (scores["kl_to_teacher"] is None) == (tokenizer != TEACHER_TOKENIZER), scores
        assert scores["kl_to_teacher"] is None or math.isfinite(scores["kl_to_teacher"]), scores
        console.print(f"{name}: exact match {100 * scores['exact_match']:.1f}% ({seconds:.0f}s)")
        results["runs"].append({"seed": seed, "row": row, "tokenizer": tokenizer, **scores,
                                "train_seconds": round(seconds, 1)})
        for copy in [c for c, source in same.items() if source == name]:
            results["runs"].append({"seed": seed, "row": runs[copy][0], "tokenizer": tokenizer, **scores,
                                    "train_seconds": None, "same_as": row})
            pending[seed].discard(copy)
        pending[seed].discard(name)
        if not pending[seed]:
            write_seed(seed)

    def write_seed(seed: int) -> None:
        results["seeds"] = [x for x in seeds if x in results["seeds"] or x == seed]
        results["runs"].sort(key=lambda r: (seeds.index(r["seed"]), list(rows).index(r["row"])))
        results["summary"] = summarise(teacher, results["runs"], list(rows), baselines)
        results["student_params"] = {r["tokenizer"]: r["params"] for r in results["runs"]}
        results["wall_seconds"] = round(time.perf_counter() - t0, 1)
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        (out / f"{stem}.md").write_text(markdown(results))

    with ExitStack() as stack:
        for method in methods:
            if METHODS[method].around is not None:
                stack.enter_context(METHODS[method].around(sh, s))
        console.rule(f"[bold]2. {len(seeds)} seed(s) × {len(rows)} students through axolotl.cli.train, "
                     f"{jobs} at a time, one queue")
        train = {k: v for k, v in runs.items() if k not in same}
        train_students(out, {k: v[1] for k, v in train.items()}, {k: v[2] for k, v in train.items()}, threads,
                       console, jobs=jobs, env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None,
                       on_done=score, prefork=device == "cpu")
    console.print(markdown(results), markup=False)  # row names hold [brackets]
    console.print(f"results -> {out / (stem + '.md')}, {out / (stem + '.json')}")
    return results


def baseline_rows(rows: dict[str, tuple[str, Settings]]) -> dict[str, str]:
    """Each row's baseline row: the row named after its method's ``baseline`` (the sweeps of
    ``--tune``/``--budget`` share the one ``sft`` row); refused when the run does not train it
    (``bench_quality.main`` adds the missing ones)."""
    for name, (method, _) in rows.items():
        if METHODS[method].baseline not in rows:
            raise SystemExit(f"row {name!r} needs its baseline row {METHODS[method].baseline!r} "
                             f"(plain SFT on its tokenizer); add --method {METHODS[method].baseline}")
    return {name: METHODS[method].baseline for name, (method, _) in rows.items()}


def row_label(name: str, method: str) -> str:
    label = METHODS[method].label
    return label if name == method else f"{label} [{name}]"
