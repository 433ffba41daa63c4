"""The quality benchmark's regimes: which task, which teacher, which students, which score.

* ``certain``: column addition (``distill_plugin.testing.addition``). One right string per prompt,
  a teacher that is sure of it (top probability 0.9997) and right, students from random weights on
  the labels the teacher learned from. No soft target can say more than the label: the honest negative.
* ``uncertain``: the order-2 Markov source (``distill_plugin.demo.source``). The right continuation
  is a distribution known in closed form; the teacher learns it from ``n_teacher_train`` draws, each
  student sees ``n_train`` draws (one label per position). Scored by the exact KL(source ‖ model).
* ``unlabelled``: addition again, the teacher on its labelled set (the certain regime's training
  split, so the same teacher), the students with the first 200 of those problems and a pool of
  prompts without answers that the teacher labels through the real ``distill-data`` pipeline,
  verified by majority vote (``unlabelled.py``).
* ``warm``: the same source and teacher; every student first takes ``warm_steps`` SFT steps on its
  sample (a trained student, as in practice), then ``student_steps`` of its method.

Each regime names its default rows, its settings (a ``replace`` of :class:`Settings`), its metrics
(the first is the one the gap closed and the paired difference are computed on) and what is expected
before running (``expectation``: printed beside the table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .methods import TOKENIZERS, Shared
from .settings import QUICK, SPLIT_SEED, Settings

TEACHER_TOKENIZER = "a"  # the shared teacher's (Shared.tokenizer)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    scale: float = 1.0
    digits: int = 4
    higher_is_better: bool = False


@dataclass(frozen=True)
class Regime:
    name: str
    title: str
    expectation: str
    settings: Settings
    quick: Settings
    methods: tuple[str, ...]
    metrics: tuple[Metric, ...]
    data: str  # "addition" or "source": which builder and scorer

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


class Scorer:
    """Scores on one split, every model with its own tokenizer (prompt and answer rendered by its
    chat template, ``core.encode``). KL(teacher ‖ student) (``evaluation.teacher_fit``, T = 1) needs
    one vocabulary on both sides, so it is ``None`` for a student on another tokenizer."""

    def __init__(self, sh: Shared, split: str, regime: Regime, s: Settings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.regime, self.s = regime, s
        self.rows = [json.loads(line) for line in sh.data(split).read_text().splitlines()]
        self.load = lambda path: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(sh.device).eval()
        self.teacher = self.load(sh.teacher)
        self._encoded: dict[str, tuple] = {}
        self.encoded(TEACHER_TOKENIZER, AutoTokenizer.from_pretrained(str(sh.tokenizer)))
        if regime.data == "source":
            from distill_plugin.demo.source import MarkovSource

            self.source = MarkovSource(length=s.source_length)
            self.reference = [r["answer"] for r in self.source.rows(s.samples, seed=30_000 + SPLIT_SEED)]

    def encoded(self, tokenizer: str, tok=None) -> tuple:
        """``(tokenizer object, the split encoded with it)`` for a key of ``methods.TOKENIZERS`` (built once)."""
        from distill_plugin.demo import core

        if tokenizer not in self._encoded:
            tok = tok or TOKENIZERS[tokenizer].build()
            self._encoded[tokenizer] = tok, [core.encode(tok, row) for row in self.rows]
        return self._encoded[tokenizer]

    def score(self, path: Path | None = None, tokenizer: str = TEACHER_TOKENIZER) -> dict:
        """The teacher's scores (``path=None``) or those of the student saved at ``path``, whose
        tokenizer is ``tokenizer`` (a key of ``methods.TOKENIZERS``)."""
        from distill_plugin.demo import core
        from distill_plugin.evaluation import teacher_fit

        model = self.teacher if path is None else self.load(path)
        tok, examples = self.encoded(tokenizer)
        teacher = None if path is None or tokenizer != TEACHER_TOKENIZER else self.teacher
        fit = teacher_fit(model, [(e.prompt_ids, e.target_ids) for e in examples], teacher,
                          pad_id=tok.pad_token_id, vocab_size=len(tok), batch_size=64)
        scores = {"kl_to_teacher": fit.kl, "heldout_ce": fit.student_ce, "params": core.count_params(model)}
        if self.regime.data == "addition":
            em, texts = core.exact_match(model, tok, examples)
            return {"exact_match": em, **scores, "sample": texts[0]}
        from distill_plugin.demo.source_scores import source_scores

        return {**source_scores(model, tok, self.source, self.rows, self.reference, samples=self.s.samples,
                                seed=self.s.seed), **scores}


def write_data(sh: Shared, s: Settings, regime: Regime) -> None:
    """``sh.data(split)`` for train / valid / held-out (disjoint), ``teacher_train`` (the teacher's
    own sample) when ``n_teacher_train`` is set, and for addition ``pool`` when ``n_pool`` is set:
    ``{"id", "prompt"}`` rows, no answer and no assistant turn (``unlabelled.pool_rows``). Addition
    splits are disjoint by problem id, the pool included, except the teacher's labelled set: drawn
    like the training split, its first ``n_train`` problems are the students' (with 2,000 it is the
    certain regime's training split, so both regimes train the same teacher)."""
    from distill_plugin.demo.source import MarkovSource
    from distill_plugin.jsonl import write_jsonl_atomic

    if regime.data == "addition":
        from distill_plugin.testing.addition import make_split

        from .unlabelled import pool_rows

        heldout = make_split(s.n_heldout, seed=10_000 + SPLIT_SEED, digits=s.digits, r1_layout=True)
        valid = make_split(s.n_valid, seed=20_000 + SPLIT_SEED, exclude={r["id"] for r in heldout},
                           digits=s.digits, r1_layout=True)
        scored = {r["id"] for r in heldout + valid}
        train = make_split(s.n_train, seed=SPLIT_SEED, exclude=scored, digits=s.digits, r1_layout=True)
        splits = {"train": train, "valid": valid, "heldout": heldout}
        if s.n_teacher_train:
            splits["teacher_train"] = make_split(s.n_teacher_train, seed=SPLIT_SEED, exclude=scored,
                                                 digits=s.digits, r1_layout=True)
        taken = {r["id"] for rows in splits.values() for r in rows}
        if s.n_pool:
            splits["pool"] = pool_rows(make_split(s.n_pool, seed=50_000 + SPLIT_SEED, exclude=taken,
                                                  digits=s.digits, r1_layout=True))
    else:  # independent draws of the source: a "split" is a sample, overlap by chance is negligible
        source = MarkovSource(length=s.source_length)
        splits = {"train": source.rows(s.n_train, SPLIT_SEED), "valid": source.rows(s.n_valid, 20_000 + SPLIT_SEED),
                  "heldout": source.rows(s.n_heldout, 10_000 + SPLIT_SEED)}
        if s.n_teacher_train:
            splits["teacher_train"] = source.rows(s.n_teacher_train, 40_000 + SPLIT_SEED)
    for name, rows in splits.items():
        write_jsonl_atomic(sh.data(name), rows)


CERTAIN_METRICS = (Metric("exact_match", "exact match %", 100, 1, higher_is_better=True),
                   Metric("kl_to_teacher", "KL(T‖S)"), Metric("heldout_ce", "held-out CE"))
SOURCE_METRICS = (Metric("kl_to_source", "KL(source‖S) / letter"), Metric("seq_kl_to_source", "sequence KL / letter"),
                  Metric("kl_to_teacher", "KL(T‖S)"), Metric("validity", "valid %", 100, 1, True),
                  Metric("entropy_ratio", "entropy ratio", 1, 2, True), Metric("coverage", "coverage", 1, 2, True))
UNCERTAIN = Settings(n_train=200, n_valid=200, n_heldout=200, n_teacher_train=20_000, teacher_steps=400,
                     student_steps=300, student_batch=16, answer_tokens=24 + 8)
# unlabelled: the teacher's 2,000 labelled problems (the certain regime's training split), the first
# 200 for the students, a pool of 1,000 prompts only. 1,000 student steps: where SFT on 2,000 labelled
# problems reaches the teacher (docs/quality_certain.md, the budget cliff), so what separates the rows
# is the data (200 labels vs the labelled pool), not the cliff.
UNLABELLED = Settings(n_train=200, n_teacher_train=2000, n_pool=1000, seqkd_samples=4, student_steps=1000)
UNLABELLED_QUICK = replace(QUICK, n_train=32, n_teacher_train=128, n_pool=64, seqkd_samples=2)
UNCERTAIN_QUICK = replace(QUICK, n_train=32, n_valid=16, n_heldout=16, n_teacher_train=256, source_length=8,
                          samples=16, answer_tokens=8 + 8)

# In the order ``--regime all`` runs them: each task's teacher is trained by the first regime that
# needs it and copied by the next (``runner.build_shared``).
REGIMES: dict[str, Regime] = {r.name: r for r in (
    Regime("certain", "certain teacher: 3-digit addition, one right answer", data="addition",
           expectation="no method beats SFT: the label already says everything the certain teacher knows",
           settings=Settings(), quick=QUICK, metrics=CERTAIN_METRICS, methods=("sft", "fkl", "topk")),
    Regime("unlabelled", "unlabelled pool: 200 labelled addition problems, a pool of prompts the teacher labels",
           data="addition",
           expectation="sequence-level KD on the teacher's majority-verified trajectories over the pool beats SFT "
                       "on the 200 by ≥ 20 points of held-out exact match; top-k KD on the same trajectories "
                       "within a few points of it (a near-certain teacher's soft targets add little to its text)",
           settings=UNLABELLED, quick=UNLABELLED_QUICK, metrics=CERTAIN_METRICS,
           methods=("sft", "seq_kd_pool", "topk_pool")),
    Regime("uncertain", "uncertain teacher: an order-2 Markov source, many right answers", data="source",
           expectation="forward-KL and top-k KD close ≥ 50 % of the SFT→teacher gap in KL to the source; "
                       "reverse KL and JSD at least as valid as forward KL, with a lower entropy ratio and "
                       "coverage; ULD and the hybrid below SFT-B in sequence KL; progressive KD (--method) at or "
                       "below direct forward KL (its middle model learns from the same 200 draws, so it knows less "
                       "than the teacher, and a 2× width gap leaves no capacity gap to bridge); attention transfer on top of "
                       "forward KL (--method) within noise of forward KL (the logits already carry the source's "
                       "two-letter context)",
           settings=UNCERTAIN, quick=UNCERTAIN_QUICK, metrics=SOURCE_METRICS,
           methods=("sft", "fkl", "rkl", "jsd", "topk", "sft_b", "uld", "uld_hybrid")),
    Regime("warm", "warm students: the uncertain source, students SFT'd first", data="source",
           expectation="from a student already SFT'd on its sample, every KD row ends closer to the source "
                       "than continued SFT; on-policy GKD (λ 0.5) at least as close as forward KL; EMA "
                       "self-distillation (--method) within noise of continued SFT (it regularises, it adds no knowledge)",
           settings=replace(UNCERTAIN, warm_steps=300, student_steps=150),
           quick=replace(UNCERTAIN_QUICK, warm_steps=4), metrics=SOURCE_METRICS,
           methods=("sft", "fkl", "rkl", "gkd")),
)}
