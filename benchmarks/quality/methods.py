"""The quality benchmark's methods: one row each, name → how to build its student's data and recipe.

A :class:`Method` says what its student trains on (``data``: ground truth, or a file its ``prepare``
step wrote), which ``distill:`` block its recipe gets (``None`` = plain SFT, Axolotl's own trainer),
and an optional ``prepare`` run once per benchmark and shared by every seed (the teacher's
trajectories, a logit store), timed and cached under ``OUT/shared/<name>``. Every student gets the
same init (per seed and student tokenizer), steps, batch, lr and seed; only these differ. A new
method is one entry in :data:`METHODS`, e.g. on-policy GKD::

    "gkd": Method("on-policy GKD (JSD)", distill=lambda sh, s: {**logit_kd(sh, s, "jsd"),
                                                              "on_policy_fraction": 0.5}),

(a served teacher would add an ``around`` context that runs its HTTP server during training).

Cross-tokenizer rows (#15) keep the shared teacher (tokenizer A, byte-level BPE) and change the
*student's* tokenizer instead (``tokenizer="b"``: the SentencePiece-style one, :data:`TOKENIZERS`), so
the teacher and its training are the same for every row. Such a student starts from an init built
with its own vocabulary, so the gap it closes is measured against plain SFT on that same tokenizer
(``baseline="sft_b"``: same init, data and budget), not against the tokenizer-A SFT student.

``distill-data`` runs as the real CLI in subprocesses (``python -m data_prep.cli``), as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from distill_plugin.demo.run import SUBPROCESS_ENV, thread_env

from .unlabelled import POOL_KEYS, pool_data, pool_topk, pool_trajectories, prepare_from_pool


@dataclass(frozen=True)
class Shared:
    """What every method may use, built once per benchmark under ``root`` (``OUT/shared``)."""

    root: Path
    device: str = "cpu"
    # Torch threads of each ``distill-data`` subprocess: OpenMP workers spin-wait, so 2 threads on a
    # 2-core machine with anything else running generate >10x slower than 1 (measured: the teacher
    # sampling 256 prompts x 2 took 50 CPU-s / 75 s wall with 2 threads, 3.2 CPU-s / 4.7 s with 1).
    threads: int = 1

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def data(self, split: str) -> Path:
        """Ground-truth rows of ``train`` / ``valid`` / ``heldout`` (disjoint by problem id)."""
        return self.root / "data" / f"{split}.jsonl"

    def work(self, method: str) -> Path:
        return self.root / method


@dataclass(frozen=True)
class StudentTokenizer:
    """A student vocabulary: ``build()`` returns the tokenizer; ``architecture`` is the tiny model class
    that keeps it on reload (``testing.tiny.build_model``: a Qwen2 config always reloads a Qwen2 tokenizer)."""

    build: Callable[[], object]
    architecture: str = "qwen2"


def sp_tokenizer():
    """Tokenizer B for the benchmark: ``testing.tiny.build_sp_tokenizer`` with the assistant header
    ``<|assistant|>`` *not* followed by a newline. With the newline, BPE merges it with the answer's
    first ``<`` (newline + ``<`` is a merge), so a prompt ending in a newline is a tokenisation the
    student never saw in training (Axolotl tokenises the whole conversation); ending the generation
    prompt on a special token makes the prompt's ids a prefix of the trained ids (a test checks it)."""
    from distill_plugin.testing.tiny import SP_CHAT_TEMPLATE, build_sp_tokenizer

    header, prompt = "{{- '<|' + message['role'] + '|>\n' }}", "{{- '<|assistant|>\n' }}"
    assert header in SP_CHAT_TEMPLATE and prompt in SP_CHAT_TEMPLATE, "testing.tiny's SP template changed"
    template = SP_CHAT_TEMPLATE.replace(header, "{{- '<|' + message['role'] + '|>' }}"
                                                "{%- if message['role'] != 'assistant' -%}{{- '\n' }}{%- endif -%}")
    return build_sp_tokenizer(chat_template=template.replace(prompt, "{{- '<|assistant|>' }}"))


def _byte_tokenizer():
    from distill_plugin.testing.tiny import build_tokenizer

    return build_tokenizer()


# "a" is the teacher's (shared by every same-tokenizer row); "b" is genuinely different (own merges,
# ▁ marker, byte fallback, 519 ids vs 261, a Phi-3-like chat template).
TOKENIZERS: dict[str, StudentTokenizer] = {
    "a": StudentTokenizer(_byte_tokenizer),
    "b": StudentTokenizer(sp_tokenizer, architecture="llama"),
}


@dataclass(frozen=True)
class Method:
    """One row of the table (see the module docstring). ``tokenizer``: the student's (a key of
    :data:`TOKENIZERS`; KL(T‖S) is only defined when it is the teacher's, "a"); ``baseline``: the
    method whose student of the same seed is the gap closed's 0 (plain SFT on the same tokenizer)."""

    label: str
    distill: Callable[[Shared, object], dict | None] = lambda sh, s: None
    data: Callable[[Shared], Path] = lambda sh: sh.data("train")
    # Returns None (its time is the call's) or the seconds of work it did itself (not waiting on another's).
    prepare: Callable[[Shared, object], float | None] | None = None
    # Settings fields the prepared artefact depends on (a change rebuilds it).
    prepare_keys: tuple[str, ...] = ()
    # Entered around the method's training runs (e.g. a teacher server); None = nothing.
    around: Callable[[Shared, object], AbstractContextManager] | None = None
    tokenizer: str = "a"
    baseline: str = "sft"
    # Top-level recipe keys beside the distill: block (e.g. attention transfer's eager attention).
    recipe: dict = field(default_factory=dict)


def distill_data(*args: str, cwd: Path, threads: int = 1) -> float:
    """``distill-data ARGS`` in a subprocess with ``threads`` torch threads; its output goes to
    ``cwd/distill-data.log``. Returns its wall seconds."""
    cmd = [sys.executable, "-m", "data_prep.cli", *args]
    start = time.perf_counter()
    with (cwd / "distill-data.log").open("a") as log:
        log.write(f"$ distill-data {' '.join(args)}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **SUBPROCESS_ENV, **thread_env(threads)},
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = (cwd / "distill-data.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"distill-data {args[0]} failed ({proc.returncode}); log {cwd / 'distill-data.log'}:\n{tail}")
    return time.perf_counter() - start


def teacher_trajectories(sh: Shared, s) -> None:
    """Sequence-level KD data: the teacher samples ``seqkd_samples`` completions per training prompt
    (``seqkd_temperature``, top-p 1) through ``distill-data generate`` (hf backend), ``verify``
    (maths checker on the answer after ``</think>``), ``filter`` (correct only; the prompts are distinct
    by construction, so no near-duplicate pass) and ``export`` (first correct, ``<think>`` kept).
    ``seqkd_keep_incorrect`` (``--quick`` only, whose teacher is barely trained) keeps wrong and unverifiable ones too."""
    work = sh.work("seq_kd")
    prompts = work / "prompts.jsonl"
    rows = [json.loads(line) for line in sh.data("train").read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"id": r["id"], "prompt": r["messages"][0]["content"],
                                           "answer": r["answer"]}) + "\n" for r in rows))
    max_tokens = max(len(r["messages"][-1]["content"]) for r in rows) + 16  # byte-level: chars ≥ tokens
    trajectories(sh, s, work, prompts, max_tokens)


def trajectories(sh: Shared, s, work: Path, prompts: Path, max_tokens: int, majority: bool = False) -> dict:
    """``distill-data generate → verify → filter → export`` of ``prompts`` into ``work/train.jsonl``
    (:func:`teacher_trajectories`' settings); ``majority``: ``verify --majority`` (a row without an
    answer is verified by the vote of its samples). Returns each stage's wall seconds (also written
    to ``work/stages.json``); raises when nothing is kept."""
    seconds = {"generate": distill_data(
        "generate", str(prompts), "-o", "gen", "--model", str(sh.teacher), "--backend", "hf",
        "-n", str(s.seqkd_samples), "--temperature", str(s.seqkd_temperature), "--top-p", "1.0",
        "--max-tokens", str(max_tokens), "--seed", "0", "--suffix", "", "--batch-size", "64",
        "--chunk-size", "256", cwd=work, threads=sh.threads)}
    # A generous per-item limit: a worker's first math-verify call warms its parser, slow on a loaded machine.
    seconds["verify"] = distill_data("verify", "gen", "-o", "ver", "--task", "math", "--workers", "1", "--timeout",
                                     "120", *(["--majority"] if majority else []), cwd=work, threads=sh.threads)
    keep = ["--keep-incorrect", "--keep-unverifiable"] if s.seqkd_keep_incorrect else []
    seconds["filter"] = distill_data("filter", "ver", "-o", "kept", "--no-dedup", *keep, cwd=work, threads=sh.threads)
    seconds["export"] = distill_data("export", "kept", "-o", "train.jsonl", "--select", "first" if keep else "first_correct",
                                     "--check-template", str(sh.tokenizer), cwd=work, threads=sh.threads)
    (work / "stages.json").write_text(json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    if not (work / "train.jsonl").read_text().strip():
        raise RuntimeError(f"{work.name}: the teacher produced no kept trajectory (see {work / 'kept'}); train it longer")
    return seconds


def topk_store(sh: Shared, s) -> None:
    """Offline top-k KD: ``distill-data logits`` captures the teacher's top ``top_k`` log-probs (T = 1)
    of every training row, tokenised by Axolotl from the same recipe the students train with."""
    capture_topk(sh, s, sh.work("topk"), sh.data("train"))


def capture_topk(sh: Shared, s, work: Path, data: Path, *kind: str) -> None:
    """``distill-data logits`` of the rows of ``data`` into ``work/store`` (:func:`topk_store`); ``kind``:
    the store's options (default ``--top-k top_k``)."""
    from distill_plugin.demo.recipe import student_recipe

    recipe = student_recipe(work / "capture.yml", s, base_model=sh.teacher, data=data,
                            output_dir=work / "unused", prepared=work / "prepared",
                            distill={"teacher_logits": str(work / "store")})
    distill_data("logits", "--config", str(recipe), "--teacher", str(sh.teacher), "-o", "store",
                 *(kind or ("--top-k", str(s.top_k))), "--batch-size", "64", "--device", sh.device, cwd=work, threads=sh.threads)


def topk_block(sh: Shared, s, name: str = "topk") -> dict:
    """The offline top-k block reading the store :func:`capture_topk` wrote under ``sh.work(name)``."""
    return {"teacher_logits": str(sh.work(name) / "store"), "divergence": "forward_kl",
            "temperature": s.temperature, "kd_weight": s.kd_weight, "ce_weight": s.ce_weight}


def sampled_answer_budget(s) -> int:
    """Tokens a sampled answer may take: the longest possible one (every column carries) + 16; the
    tokenizer is byte-level, so characters bound tokens."""
    from distill_plugin.testing.addition import working

    top = 10**s.digits - 1
    return len(f"<think>\n{working(top, top, s.digits)}\n</think>\n\n{2 * top}") + 16


def gkd(sh: Shared, s, fraction: float = 0.5) -> dict:
    """On-policy GKD: a ``fraction`` λ of the optimizer steps (drawn per step) train on completions the
    student samples, scored by the teacher with JSD(β = 0.5); the others on the data's answers. No CE:
    the plugin refuses it with on-policy steps (it would fit the student's own samples)."""
    return {**logit_kd(sh, s, "jsd"), "beta": 0.5, "kd_weight": 1.0, "ce_weight": 0.0, "on_policy_fraction": fraction,
            "max_new_tokens": s.answer_tokens or sampled_answer_budget(s), "generation_temperature": 1.0}


def cross_tokenizer(sh: Shared, s, mode: str) -> dict:
    """Cross-tokenizer KD from the shared teacher (tokenizer A) to a tokenizer-B student: the collator
    aligns both tokenisations at common character offsets and each aligned span compares the two
    next-token distributions. ``uld`` (``recipes/uld_llama_to_qwen.yml``'s): the sorted-probability
    L1 that ignores which token is which (Boizard et al.); ``hybrid``: forward KL between the two
    next-byte distributions (A writes one byte per token; B's merges such as ``+1=`` count for their
    first byte) plus ``cross_uld_weight`` × ULD. The same temperature as the same-tokenizer logit
    rows; the recipe's weights (``cross_kd_weight``/``cross_ce_weight``, chosen from the five-seed
    sweep in docs/quality.md); full sorted vocabularies (``uld_top_k`` unset: 261 and 519 ids)."""
    block = {**logit_kd(sh, s, "forward_kl"), "cross_tokenizer": mode,
             "kd_weight": s.cross_kd_weight, "ce_weight": s.cross_ce_weight}
    if mode == "uld":
        block.pop("divergence")  # used by hybrid's next-byte part only (the plugin refuses it with uld)
    elif s.cross_uld_weight != 1.0:
        block["uld_weight"] = s.cross_uld_weight
    return block


def ema_self(sh: Shared, s) -> dict:
    """EMA self-distillation (``recipes/ema_self_distill.yml``'s weights): no teacher model; the teacher
    is the moving average of the student's own weights (decay ``ema_decay``), forward KL at the tuned
    temperature beside CE on the data."""
    return {"ema_decay": s.ema_decay, "divergence": "forward_kl", "temperature": s.temperature,
            "kd_weight": 0.5, "ce_weight": 1.0}


def middle_model(sh: Shared, s) -> None:
    """Progressive distillation's first stage (``recipes/progressive/``): a model between the teacher and
    the students in size (``middle_hidden`` × ``middle_layers``, random weights), distilled from the
    teacher with forward-KL logit KD on the students' training rows for ``student_steps`` through
    ``python -m axolotl.cli.train`` (seed 0), saved to ``sh.work("progressive") / "middle"``; the
    row's students then distil from it (the second stage)."""
    from dataclasses import replace

    from distill_plugin.demo.recipe import student_recipe
    from distill_plugin.testing.tiny import build_model
    from transformers import AutoTokenizer

    work, tok = sh.work("progressive"), AutoTokenizer.from_pretrained(str(sh.tokenizer))
    build_model(work / "middle_init", tok, hidden_size=s.middle_hidden, num_layers=s.middle_layers, num_heads=4, seed=0)
    tok.save_pretrained(str(work / "middle_init"))
    recipe = student_recipe(work / "middle.yml", replace(s, seed=0), base_model=work / "middle_init",
                            data=sh.data("train"), output_dir=work / "middle", prepared=work / "prepared",
                            distill=logit_kd(sh, s, "forward_kl"), pad_to_multiple_of=s.pad_to_multiple_of)
    with (work / "middle.log").open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=work, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **SUBPROCESS_ENV, **thread_env(sh.threads),
                                                             "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode:
        raise RuntimeError(f"progressive: the middle model's training failed ({proc.returncode}); log {work / 'middle.log'}")


def logit_kd(sh: Shared, s, divergence: str) -> dict:
    """The online logit-KD block with the tuned temperature and weights."""
    return {"teacher": str(sh.teacher), "divergence": divergence, "temperature": s.temperature,
            "kd_weight": s.kd_weight, "ce_weight": s.ce_weight}


METHODS: dict[str, Method] = {
    "sft": Method("SFT (ground truth)"),
    "seq_kd": Method("sequence-level KD (teacher's trajectories)", prepare=teacher_trajectories,
                     data=lambda sh: sh.work("seq_kd") / "train.jsonl",
                     prepare_keys=("seqkd_samples", "seqkd_temperature", "seqkd_keep_incorrect")),
    "fkl": Method("logit KD, forward KL", distill=lambda sh, s: logit_kd(sh, s, "forward_kl")),
    "rkl": Method("logit KD, reverse KL", distill=lambda sh, s: logit_kd(sh, s, "reverse_kl")),
    "topk": Method("offline top-k KD (forward KL)", prepare=topk_store, prepare_keys=("top_k",), distill=topk_block),
    # Offline stores compared (issue 30), each its own capture of the training rows; not default rows:
    "topk64": Method("offline top-64 KD (forward KL)", distill=lambda sh, s: topk_block(sh, s, "topk64"),
                     prepare=lambda sh, s: capture_topk(sh, s, sh.work("topk64"), sh.data("train"), "--top-k", "64")),
    "adaptive": Method("offline adaptive top-k KD (forward KL, cap 64)", prepare_keys=("store_epsilon",),
                       prepare=lambda sh, s: capture_topk(sh, s, sh.work("adaptive"), sh.data("train"), "--top-k", "64",
                                                          "--epsilon", str(s.store_epsilon)),
                       distill=lambda sh, s: topk_block(sh, s, "adaptive")),
    "sampled": Method("offline sampled store KD (forward KL, unbiased)", prepare_keys=("store_samples",),
                      prepare=lambda sh, s: capture_topk(sh, s, sh.work("sampled"), sh.data("train"), "--samples",
                                                         str(s.store_samples), "--seed", "0"),
                      distill=lambda sh, s: topk_block(sh, s, "sampled")),
    "jsd": Method("logit KD, JSD (β=0.5)", distill=lambda sh, s: {**logit_kd(sh, s, "jsd"), "beta": 0.5}),
    "gkd": Method("on-policy GKD (JSD β=0.5, λ=0.5)", distill=gkd),
    "gkd_full": Method("on-policy GKD (JSD β=0.5, λ=1)", distill=lambda sh, s: gkd(sh, s, 1.0)),
    # DistillKit's hidden-state distillation: CE on the data plus the hidden-state loss, no logit KD.
    "hidden": Method("hidden-state KD (+CE)", distill=lambda sh, s: {
        "teacher": str(sh.teacher), "kd_weight": 0.0, "ce_weight": 1.0, "hidden_weight": s.hidden_weight,
        "hidden_loss": "cosine", "hidden_layers": f"uniform:{s.student_layers}", "hidden_projector": "linear"}),
    # The attention row's control: the same students with eager attention and no attention term.
    "fkl_eager": Method("logit KD, forward KL, eager attention", recipe={"attn_implementation": "eager"},
                        distill=lambda sh, s: logit_kd(sh, s, "forward_kl")),
    # Attention transfer on top of forward KL: eager attention (the only kind that returns probabilities).
    "attention": Method("logit KD + attention transfer (forward KL, uniform:2)", recipe={"attn_implementation": "eager"},
                        distill=lambda sh, s: {**logit_kd(sh, s, "forward_kl"), "attention_weight": s.attention_weight,
                                               "attention_layers": "uniform:2"}),
    # No teacher model: the student's own moving average (the warm regime: it regularises, adds no knowledge).
    "ema": Method("EMA self-distillation (no teacher, forward KL + CE)", distill=ema_self),
    # Two stages: teacher -> middle model (prepare) -> student, against "fkl" (teacher -> student).
    "progressive": Method("progressive KD (teacher → middle → student, forward KL)", prepare=middle_model,
                          prepare_keys=("middle_hidden", "middle_layers", "student_steps", "temperature", "kd_weight",
                                        "ce_weight", "n_train"),
                          distill=lambda sh, s: {**logit_kd(sh, s, "forward_kl"),
                                                 "teacher": str(sh.work("progressive") / "middle")}),
    # Cross-tokenizer (#15): a tokenizer-B student, its own SFT baseline, the shared tokenizer-A teacher.
    "sft_b": Method("SFT (ground truth), student tokenizer B", tokenizer="b", baseline="sft_b"),
    "uld": Method("cross-tokenizer KD, ULD (the recipe's), student tokenizer B", tokenizer="b", baseline="sft_b",
                  distill=lambda sh, s: cross_tokenizer(sh, s, "uld")),
    "uld_hybrid": Method("cross-tokenizer KD, hybrid (next-byte KL + ULD), student tokenizer B", tokenizer="b",
                         baseline="sft_b", distill=lambda sh, s: cross_tokenizer(sh, s, "hybrid")),
    # Regime "unlabelled" (unlabelled.py): trained on the teacher's majority-verified trajectories over the pool.
    "seq_kd_pool": Method("sequence-level KD (teacher's trajectories over the pool, majority-verified)",
                          prepare=lambda sh, s: pool_trajectories(sh, s)["total"], data=pool_data, prepare_keys=POOL_KEYS),
    "fkl_pool": Method("logit KD, forward KL, on the pool's trajectories", prepare=prepare_from_pool, data=pool_data,
                       prepare_keys=POOL_KEYS, distill=lambda sh, s: logit_kd(sh, s, "forward_kl")),
    "topk_pool": Method("offline top-k KD (forward KL) on the pool's trajectories", prepare=pool_topk, data=pool_data,
                        prepare_keys=(*POOL_KEYS, "top_k"), distill=lambda sh, s: topk_block(sh, s, "topk_pool")),
    "gkd_pool": Method("on-policy GKD (JSD β=0.5, λ=0.5) on the pool's prompts", prepare=prepare_from_pool,
                       data=pool_data, prepare_keys=POOL_KEYS, distill=gkd),
}


def prepare_all(sh: Shared, s, names: list[str], console, jobs: int = 1) -> dict[str, float]:
    """Run each method's ``prepare`` once (skipped when ``OUT/shared/<name>/done.json`` holds the same
    settings), ``jobs`` at a time (each runs its own ``distill-data`` subprocesses with ``sh.threads``
    threads); returns the seconds each took when it was built (what its ``prepare`` returns, if anything)."""
    from concurrent.futures import ThreadPoolExecutor

    seconds, todo = {}, []
    for name in names:
        method = METHODS[name]
        if method.prepare is None:
            continue
        work, key = sh.work(name), {k: getattr(s, k) for k in method.prepare_keys}
        done = work / "done.json"
        if done.exists() and json.loads(done.read_text())["settings"] == key:
            seconds[name] = json.loads(done.read_text())["seconds"]
            console.print(f"{name}: reusing {work} (built in {seconds[name]:.0f}s)")
            continue
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        todo.append((name, key))

    def build(name: str, key: dict) -> None:
        start = time.perf_counter()
        took = METHODS[name].prepare(sh, s)
        seconds[name] = time.perf_counter() - start if took is None else took
        (sh.work(name) / "done.json").write_text(json.dumps({"settings": key, "seconds": seconds[name]}))
        console.print(f"{name}: prepared in {seconds[name]:.0f}s -> {sh.work(name)}")

    if todo:
        with console.status(f"preparing {', '.join(name for name, _ in todo)}"), \
                ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for future in [pool.submit(build, name, key) for name, key in todo]:
                future.result()
    return seconds
