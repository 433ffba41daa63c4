"""End to end through ``axolotl.cli.train``: a tiny teacher on tokenizer A (byte-level, ChatML)
teaches a tiny student on tokenizer B (SentencePiece-style, its own chat template), with the
recipe's ULD and with the hybrid (next-byte KL + ULD); on held-out problems the student's next-byte
KL to the teacher drops below the untrained student's, and the trained student writes its own
tokenizer's tokens."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from axolotl_runs import REPO
from twin_runs import check_promises, train_twin

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "uld_llama_to_qwen.yml"


def train_teacher(path, steps=80):
    """The tiny teacher learns the addition task (plain SFT, the demo's loop) so it has something to teach."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.demo.core import encode, train_causal_lm
    from distill_plugin.testing.addition import make_split

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    train_causal_lm(model, [encode(tok, r) for r in make_split(256, seed=7)], tok.pad_token_id, steps, 16, 3e-3)
    model.save_pretrained(path)


@torch.no_grad()
def next_byte_kl(student_path, teacher_path, rows) -> float:
    """Mean over aligned answer positions of KL(teacher ‖ student) between the next-byte
    distributions (each side's probabilities summed by the first byte of its tokens): plain float64
    softmaxes on full logits and a one-hot sum."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.alignment.collator import Aligner
    from distill_plugin.alignment.tokens import NUM_BYTE_CLASSES, next_byte_classes, token_lengths

    s_tok, t_tok = AutoTokenizer.from_pretrained(student_path), AutoTokenizer.from_pretrained(teacher_path)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float64).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float64).eval()
    aligner, classes = Aligner(s_tok, t_tok), next_byte_classes(s_tok, t_tok)
    by_byte = lambda p, c: p @ torch.nn.functional.one_hot(c, NUM_BYTE_CLASSES).to(p.dtype)  # noqa: E731
    total, count = 0.0, 0
    for row in rows:
        text = s_tok.apply_chat_template(row["messages"], tokenize=False)
        ids = np.asarray(s_tok(text, add_special_tokens=False)["input_ids"])
        answer = text.rindex(row["messages"][-1]["content"])
        labels = np.where(np.cumsum(token_lengths(s_tok)[ids]) > answer, ids, -100)
        found = aligner(ids, labels)
        p = torch.softmax(teacher(torch.as_tensor(found.teacher_ids)[None]).logits[0, found.teacher_pos], -1)
        q = torch.softmax(student(torch.as_tensor(ids)[None]).logits[0, found.student_pos, : len(s_tok)], -1)
        p, q = by_byte(p, classes.teacher), by_byte(q, classes.student)
        total += (p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum().item()
        count += len(found.student_pos)
    assert count > 5 * len(rows)  # most answer positions align
    return total / count


@torch.no_grad()
def canonical_share(student_path, rows, new_tokens=40) -> float:
    """Σ tokens its own tokenizer writes for the student's greedy answers / Σ tokens it generated:
    1.0 when the student writes its tokenizer's tokens; below when it spells text in pieces its
    tokenizer merges (what equal-string matching to a byte-level teacher taught it: ``+`` ``4`` ``=``
    for ``+4=``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_plugin.alignment.tokens import token_bytes

    tok = AutoTokenizer.from_pretrained(student_path)
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()
    pieces, written, generated = token_bytes(tok), 0, 0
    for row in rows:
        prompt = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, return_dict=True,
                                         return_tensors="pt")["input_ids"]
        # min_new_tokens: the share measures which tokens it writes, so a student that would end the turn at
        # once (its greedy first token EOS) still writes some to measure.
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        ids = [i for i in out[0, prompt.shape[1]:].tolist() if i != tok.eos_token_id and i != tok.pad_token_id]
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        written += len(tok(text, add_special_tokens=False)["input_ids"])
        generated += len(ids)
    return written / max(generated, 1)


@pytest.fixture(scope="module")
def trained_pair(cross_pair):
    """The cross pair, its teacher trained on the addition task (once for the module)."""
    start = time.monotonic()
    train_teacher(cross_pair[0])
    print(f"teacher trained in {time.monotonic() - start:.0f} s")
    return cross_pair


def train_cross(tmp_path, trained_pair, arithmetic_data, twin_root, distill: dict | None = None):
    """The recipe's own twin (its student the one on the second tokenizer), trained 36 steps. What a
    learning check needs beyond the twin: the recipe's lr (1e-5, for 1.5B parameters) does not move a
    32-wide student in 36 steps; an evaluation at the start and the end to compare."""
    teacher, student = trained_pair
    overrides = {"learning_rate": 3e-3, "val_set_size": 0.25, "eval_steps": 18, **({"distill": distill} if distill else {})}
    run = train_twin(RECIPE, twin_root, tmp_path, overrides, steps=36, teacher=teacher, data=arithmetic_data,
                     cross_student=student, prepared=tmp_path / "prepared")
    assert run.student == student  # derive_twin took the student on the second tokenizer
    mode = run.config["distill"]["cross_tokenizer"]
    assert len(re.findall(rf"tokenizers differ \(261 vs 519 tokens\), alignment in use \(cross_tokenizer {mode}, "
                          r"teacher uses its own chat template\)", run.output)) == 1, run.output[-4000:]
    return run


def learned(run, trained_pair, name: str) -> None:
    """The ``eval_<name>_loss`` drops; the held-out next-byte KL to the teacher falls below the untrained
    student's; the trained student writes its own tokenizer's tokens."""
    from distill_plugin.testing.addition import make_split

    teacher, student = trained_pair
    evals = [float(v) for v in re.findall(rf"'eval_{name}_loss': '?([-\d.e+]+)", run.output)]
    assert len(evals) >= 2 and evals[-1] < evals[0], evals  # first vs last evaluation
    heldout = make_split(24, seed=99)
    before, after = next_byte_kl(student, teacher, heldout), next_byte_kl(run.out, teacher, heldout)
    print(f"held-out next-byte KL to the teacher: untrained {before:.3f} -> trained {after:.3f}")
    assert after < 0.8 * before
    share = canonical_share(run.out, heldout[:8])
    print(f"tokens its tokenizer writes / tokens generated: {share:.2f}")
    assert share > 0.9


def test_recipe_uld_teaches_the_student(tmp_path, trained_pair, arithmetic_data, twin_root):
    """The recipe as written (ULD + CE): its ``# twin-checks:`` (the twin's one run in the suite,
    ``test_e2e_twins.TRAINED_ELSEWHERE``) and the learning checks."""
    run = train_cross(tmp_path, trained_pair, arithmetic_data, twin_root)
    check_promises(RECIPE, run)  # uld_loss, ce_loss, eval, alignment
    assert all(e["uld_loss"] > 0 and "next_byte_loss" not in e for e in run.logs)
    learned(run, trained_pair, "uld")


def test_hybrid_teaches_the_student(tmp_path, trained_pair, arithmetic_data, twin_root):
    """The recipe with ``cross_tokenizer: hybrid`` at the weights of its first release (kd 0.5 / ce 0.5):
    both KD components logged, and the learning checks on the next-byte term."""
    run = train_cross(tmp_path, trained_pair, arithmetic_data, twin_root,
                      {"cross_tokenizer": "hybrid", "divergence": "forward_kl", "kd_weight": 0.5, "ce_weight": 0.5})
    assert all(e["next_byte_loss"] > 0 and e["uld_loss"] > 0 for e in run.logs)
    learned(run, trained_pair, "next_byte")
