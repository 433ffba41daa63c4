"""The quality benchmark's settings: one frozen dataclass for every regime, each regime's defaults
(``regimes.py``) are a ``replace`` of it, and ``--set KEY=VALUE`` overrides a field."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from distill_plugin.demo.run import Budget


@dataclass(frozen=True)
class Settings(Budget):
    """Every knob of a run; the sizes and budgets (``Budget``) with the certain regime's defaults."""

    teacher_steps: int = 700
    student_steps: int = 500
    digits: int = 3
    n_train: int = 2000
    n_valid: int = 200
    n_heldout: int = 200
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
    attention_weight: float = 1.0  # attention transfer's row, beside forward KL at kd_weight
    ema_decay: float = 0.99  # EMA self-distillation: an average over about the last 100 of the warm regime's 150 steps
    middle_hidden: int = 72  # progressive KD's middle model, between the teacher (96 × 3) and the students (48 × 2)
    middle_layers: int = 3
    store_epsilon: float = 0.01  # the "adaptive" row: distill-data logits --top-k 64 --epsilon
    store_samples: int = 12  # the "sampled" row: distill-data logits --samples (the paper's ~12)
    seqkd_samples: int = 2
    seqkd_temperature: float = 1.0
    seqkd_keep_incorrect: bool = False  # True only in QUICK: its 30-step teacher is rarely right
    # the uncertain-teacher source (regimes "uncertain" and "warm": distill_plugin/demo/source.py)
    source_length: int = 24
    n_teacher_train: int = 0  # 0: the teacher trains on the students' train split; else on its own sample
    n_pool: int = 0  # regime "unlabelled": prompts without answers the teacher labels (0: no pool)
    samples: int = 200  # answers each model samples for validity, entropy ratio and coverage
    warm_steps: int = 0  # SFT steps (the demo's torch loop) every student takes before its method's steps
    answer_tokens: int = 0  # on-policy answers' token budget; 0: the longest addition answer + 16
    seed: int = 0  # the student's: init and Axolotl seed (data order)


# The teacher and the data depend on these only (a change rebuilds OUT/shared).
SHARED_KEYS = ("digits", "n_train", "n_valid", "n_heldout", "teacher_hidden", "teacher_layers", "teacher_steps",
               "teacher_batch", "teacher_lr", "source_length", "n_teacher_train")
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


