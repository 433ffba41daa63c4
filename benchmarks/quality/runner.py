"""The quality benchmark's glue: shared teacher and data, every method × seed through ``axolotl.cli.train``.

    python benchmarks/bench_quality.py [--quick] [--seed N ...] [--method NAME ...] [--tune]

1. ``OUT/shared`` (built once, reused while its settings match): the regime's data (``regimes.py``:
   train / valid / held-out, and the teacher's own sample where it has one), the tiny tokenizer, and a
   teacher trained with the demo's torch loop (``core.train_causal_lm``), or copied from another
   regime's shared folder (``donors``) whose teacher saw the same rows, tokenizer and settings; then
   each method's ``prepare`` (``methods.py``).
2. Per seed ``N`` (``OUT/seed_N``): a student init per (size, student tokenizer) (random, seeded by
   ``N``; in the warm regime then ``warm_steps`` of SFT on the train split) and one recipe per method (``recipe.student_recipe``: same init, data budget, steps, batch,
   lr and Axolotl seed ``N``; only the data file and the ``distill:`` block differ); all recipes of all
   seeds run through ``python -m axolotl.cli.train`` (forked from one process that imported Axolotl
   once, ``prefork.py``), ``jobs`` at a time, in one queue. Students of one tokenizer and data file
   share one tokenisation (``OUT/prepared``, ``shared_preparation``). A run whose recipe and training
   rows equal an earlier run's of its seed is not trained: it takes that run's student and scores
   (``reuse.same_students``; seq_kd when the teacher's trajectories are the ground truth).
3. Every student and the teacher are scored on the held-out split (``valid`` when tuning), each with
   its own tokenizer and chat template, by the regime's ``Scorer``: exact match (addition) or the KL
   to the source and the sample scores (the Markov source), CE on the held-out answers and token-mean
   KL(teacher ‖ student) (T = 1; only for students on the teacher's tokenizer: across vocabularies a
   token-level KL is undefined, reported as ``None``/–).
4. Per method over the seeds (``table.py``, ``seeds.spread``): mean ± standard error of each metric,
   the paired per-seed difference of the regime's first metric against the same seed's student of the
   method's ``baseline`` (SFT on the same tokenizer), the fraction of the baseline→teacher gap closed
   on it (per seed: ``(m − m_base) / (m_teacher − m_base)``), and the wall time of one student's ``axolotl.cli.train`` run (plus the shared
   prepare step, once). Printed, and written to ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

from distill_plugin.demo.recipe import student_recipe
from distill_plugin.demo.run import claim_output, fresh, train_students

from .methods import METHODS, TOKENIZERS, Shared, prepare_all
from .regimes import TEACHER_TOKENIZER, Regime, Scorer, write_data
from .reuse import same_students
from .settings import SHARED_KEYS, SPLIT_SEED, TEACHER_INIT_SEED, Settings
from .table import markdown, summarise


# ---------------------------------------------------------------------------------------------- shared


def train_teacher(sh: Shared, s: Settings, console, out: Path | None = None) -> float:
    """Train the teacher (the demo's loop, ``core.train_causal_lm``) on its own sample (``teacher_train``)
    where the regime has one, else on the students' training split; save it to
    ``out`` (default ``sh.teacher``) with the tokenizer; return its seconds."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoTokenizer

    from distill_plugin.testing.tiny import build_model
    from distill_plugin.demo import core

    tok = AutoTokenizer.from_pretrained(str(sh.tokenizer))
    train = [core.encode(tok, json.loads(line)) for line in teacher_data(sh).read_text().splitlines()]
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


TEACHER_KEYS = ("teacher_hidden", "teacher_layers", "teacher_steps", "teacher_batch", "teacher_lr")


def teacher_data(sh: Shared) -> Path:
    """The rows the teacher trains on: its own sample where the regime has one, else the students' split."""
    return sh.data("teacher_train") if sh.data("teacher_train").exists() else sh.data("train")


def teacher_key(sh: Shared, s: Settings) -> str:
    """A digest of everything the teacher's training reads: its rows, the tokenizer's files, its
    settings and the device (the seeds are constants)."""
    digest = hashlib.sha256(teacher_data(sh).read_bytes())
    for path in sorted(sh.tokenizer.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(json.dumps({"device": sh.device, **{k: getattr(s, k) for k in TEACHER_KEYS}}).encode())
    return digest.hexdigest()


def build_shared(sh: Shared, s: Settings, regime: Regime, console, donors: tuple[Path, ...] = ()) -> dict:
    """Data, tokenizer and teacher under ``sh.root``, reused when ``manifest.json`` has the same settings.
    The teacher is copied from the first of ``donors`` (other regimes' ``OUT/shared``) whose manifest
    has the same :func:`teacher_key`, else trained."""
    from distill_plugin.testing.tiny import build_tokenizer

    key = {"data": regime.data, **{k: getattr(s, k) for k in SHARED_KEYS},
           **({"n_pool": s.n_pool} if s.n_pool else {})}  # only where a pool exists: older manifests still match
    manifest = sh.root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["settings"] == key:
        built = json.loads(manifest.read_text())
        console.print(f"reusing {sh.root} (teacher trained in {built['teacher_seconds']:.0f}s)")
        return built
    fresh(sh.root).mkdir(parents=True)
    write_data(sh, s, regime)
    build_tokenizer(sh.tokenizer)
    built = {"settings": key, "teacher_key": teacher_key(sh, s)}
    donor = next((d for d in donors if (d / "manifest.json").exists()
                  and json.loads((d / "manifest.json").read_text()).get("teacher_key") == built["teacher_key"]), None)
    if donor is None:
        built["teacher_seconds"] = train_teacher(sh, s, console)
        console.print(f"teacher trained in {built['teacher_seconds']:.0f}s -> {sh.teacher}")
    else:
        shutil.copytree(donor / "teacher", sh.teacher)
        built.update(teacher_seconds=json.loads((donor / "manifest.json").read_text())["teacher_seconds"],
                     teacher_from=str(donor))
        console.print(f"teacher: {donor / 'teacher'} (the same rows, tokenizer and settings), copied")
    manifest.write_text(json.dumps(built))
    return built


# ---------------------------------------------------------------------------------------------- students


def student_runs(out: Path, sh: Shared, rows: dict[str, tuple[str, Settings]], seed: int) -> dict:
    """Write the seed's student inits (one per size and student tokenizer, the same for every row that
    shares them) and one recipe per row; returns ``{run: (row, recipe, steps)}``. Every recipe names
    its tokenizer's folder (``student_tokenizer``) and ``OUT/prepared``: one tokenised dataset per
    (tokenizer, data file), shared by every seed and row (``shared_preparation``)."""
    runs = {}
    sdir = out / f"seed_{seed}"
    fresh(sdir).mkdir(parents=True)
    for row, (method, s) in rows.items():
        m = METHODS[method]
        s = replace(s, seed=seed)
        init = student_init(sdir, sh, s, m.tokenizer)
        recipe = student_recipe(sdir / "recipes" / f"{row}.yml", s, base_model=init, data=m.data(sh),
                                output_dir=sdir / row, prepared=out / "prepared", distill=m.distill(sh, s),
                                tokenizer=student_tokenizer(out, m.tokenizer), pad_to_multiple_of=s.pad_to_multiple_of,
                                extra=m.recipe)
        runs[f"s{seed}_{row}"] = (row, recipe, s.student_steps)
    return runs


def student_init(sdir: Path, sh: Shared, s: Settings, tokenizer: str) -> Path:
    """The seed's student init for (size, tokenizer, warm steps), built on first use: random weights
    seeded by ``s.seed``, then ``s.warm_steps`` of SFT on the train split (the demo's torch loop, the
    students' batch and lr, data order seeded by ``s.seed``) when the regime warms its students."""
    from distill_plugin.demo import core
    from distill_plugin.testing.tiny import build_model

    init = sdir / f"student_init_{s.student_hidden}x{s.student_layers}_{tokenizer}_warm{s.warm_steps}"
    if init.exists():
        return init
    vocab = TOKENIZERS[tokenizer]
    tok = vocab.build()
    model = build_model(None, tok, hidden_size=s.student_hidden, num_layers=s.student_layers, num_heads=4,
                        seed=s.seed, architecture=vocab.architecture)
    if s.warm_steps:
        rows = [json.loads(line) for line in sh.data("train").read_text().splitlines()]
        core.train_causal_lm(model, [core.encode(tok, r) for r in rows], tok.pad_token_id, s.warm_steps,
                             s.student_batch, s.student_lr, seed=s.seed, warmup=max(1, s.warm_steps // 20))
    model.save_pretrained(str(init))
    tok.save_pretrained(str(init))
    return init


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


def run(out: Path, regime: Regime, s: Settings, rows: dict[str, tuple[str, Settings]], seeds: list[int],
        split: str = "heldout", jobs: int = 2, threads: int = 1, device: str = "cpu", stem: str = "results",
        console=None, donors: tuple[Path, ...] = (), against: tuple[str, ...] = ()) -> dict:
    """The benchmark (module docstring) of one regime; ``rows`` maps a row name to (method, its settings);
    ``donors``: other regimes' ``OUT/shared`` whose teacher may be copied (:func:`build_shared`). The
    students of every seed form one queue (seed by seed, ``jobs`` at a time, so no slot idles at a
    seed's end); each is scored as it ends, beside the runs still going (one thread), and the results
    so far are written to ``OUT/<stem>.json`` and ``.md`` whenever a seed is complete. ``against``:
    rows every row is also paired with, seed by seed (``--against``)."""
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    console = console or Console()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, jobs * threads))
    t0 = time.perf_counter()
    baselines = baseline_rows(rows)  # before any work: a row without its baseline is refused
    if set(against) - set(rows):
        raise SystemExit(f"--against {', '.join(sorted(set(against) - set(rows)))}: not a row of this run; add --method")
    out = claim_output(out, ".bench_quality", "benchmarks/bench_quality.py")
    sh = Shared(out / "shared", device, threads)
    console.rule("[bold]1. shared: data, teacher, method preparation")
    built = build_shared(sh, s, regime, console, donors)
    methods = sorted({m for m, _ in rows.values()})
    prep = prepare_all(sh, s, methods, console, jobs=jobs)
    scorer = Scorer(sh, split, regime, s)
    primary = regime.primary
    with console.status(f"evaluating the teacher on the {split} split"):
        teacher = scorer.score()
    console.print(f"teacher: {primary.label} {primary.scale * teacher[primary.key]:.{primary.digits}f} "
                  f"on {len(scorer.rows)} {split} rows")
    results = {
        "regime": regime.name, "title": regime.title, "expectation": regime.expectation,
        "metrics": [asdict(m) for m in regime.metrics], "settings": asdict(s), "seeds": [], "split": split, "split_size": len(scorer.rows), "jobs": jobs,
        "threads": threads, "device": device,
        "rows": {name: {"method": m, "label": row_label(name, m), "tokenizer": METHODS[m].tokenizer,
                        "baseline": baselines[name], "settings": asdict(rs)} for name, (m, rs) in rows.items()},
        "teacher": teacher, "teacher_seconds": built["teacher_seconds"], "teacher_from": built.get("teacher_from"),
        "prepare_seconds": prep, "runs": [], "against": list(against),
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
        assert all(math.isfinite(scores[m.key]) for m in regime.metrics if scores[m.key] is not None), scores
        assert math.isfinite(scores["heldout_ce"]), scores
        assert (scores["kl_to_teacher"] is None) == (tokenizer != TEACHER_TOKENIZER), scores
        value = scores[primary.key] if scores[primary.key] is not None else math.nan  # 0.0 is a score
        console.print(f"{name}: {primary.label} {primary.scale * value:.{primary.digits}f} ({seconds:.0f}s)")
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
        results["summary"] = summarise(teacher, results["runs"], list(rows), regime.metrics, baselines, tuple(against))
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
