"""teacher_fit against a plain float64 full-logit reference (whole models in float64, every logit
materialised, textbook formulas), with padding, several batches, small chunks, an empty completion
and lm_heads padded past the tokenizer (cut, never compared)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from distill_plugin.evaluation import completion_batch, encode_completion, teacher_fit
from distill_plugin.generation import render_chat
from distill_plugin.testing.tiny import build_model, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    """Untrained teacher/student (far apart: KL is large) with heads padded to different sizes."""
    teacher = build_model(None, tok, hidden_size=48, seed=1, vocab_pad_to=300).eval()
    student = build_model(None, tok, hidden_size=32, seed=2, vocab_pad_to=280).eval()
    with torch.no_grad():  # peaked distributions (an untrained head is near uniform): KL of order 1
        teacher.lm_head.weight.mul_(40)
        student.lm_head.weight.mul_(25)
    return teacher, student


def sequences(tok, n=7, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 9))]
        completion = [rng.randrange(len(tok)) for _ in range(0 if i == 3 else rng.randint(1, 12))]
        out.append((prompt, completion))
    return out


@pytest.fixture(scope="module")
def models64(models):
    return tuple(copy.deepcopy(m).double() for m in models)


def reference(models64, seqs, vocab):
    """Σ over completion tokens of KL(p‖q), −log q[y], −log p[y] / N, in float64 from full logits,
    one unpadded sequence at a time."""
    t64, s64 = models64
    kl = s_ce = t_ce = 0.0
    n = 0
    for prompt, completion in seqs:
        if not completion:
            continue
        ids = torch.tensor([prompt + completion])
        rows = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)  # row t predicts token t+1
        y = torch.tensor(completion)
        with torch.no_grad():
            q = torch.softmax(s64(input_ids=ids).logits[0, rows, :vocab], -1)
            p = torch.softmax(t64(input_ids=ids).logits[0, rows, :vocab], -1)
        kl += float((p * (p.log() - q.log())).sum())
        s_ce -= float(q[torch.arange(len(y)), y].log().sum())
        t_ce -= float(p[torch.arange(len(y)), y].log().sum())
        n += len(y)
    return kl / n, s_ce / n, t_ce / n, n


@pytest.mark.parametrize("batch_size,chunk_size", [(1, None), (3, 5), (8, 64)])
def test_matches_float64_reference(tok, models, models64, batch_size, chunk_size):
    teacher, student = models
    seqs = sequences(tok)
    kl, s_ce, t_ce, n = reference(models64, seqs, len(tok))
    fit = teacher_fit(student, seqs, teacher, pad_id=tok.pad_token_id, vocab_size=len(tok),
                      batch_size=batch_size, chunk_size=chunk_size)
    assert fit.tokens == n and fit.sequences == len(seqs)
    assert kl > 0.5  # a real gap to measure
    assert fit.kl == pytest.approx(kl, rel=1e-5)
    assert fit.student_ce == pytest.approx(s_ce, rel=1e-5)
    assert fit.teacher_ce == pytest.approx(t_ce, rel=1e-5)


def test_without_teacher_only_student_ce(tok, models, models64):
    _, student = models
    seqs = sequences(tok, seed=1)
    _, s_ce, _, n = reference(models64, seqs, len(tok))
    fit = teacher_fit(student, seqs, pad_id=tok.pad_token_id, vocab_size=len(tok), batch_size=2, chunk_size=4)
    assert (fit.kl, fit.teacher_ce, fit.tokens) == (None, None, n)
    assert fit.student_ce == pytest.approx(s_ce, rel=1e-5)


def test_vocab_defaults_to_the_smaller_head(tok, models, models64):
    teacher, student = models
    seqs = sequences(tok, seed=2)
    kl, s_ce, t_ce, _ = reference(models64, seqs, 280)
    fit = teacher_fit(student, seqs, teacher, pad_id=tok.pad_token_id)
    assert (fit.kl, fit.student_ce, fit.teacher_ce) == pytest.approx((kl, s_ce, t_ce), rel=1e-5)


def test_a_model_against_itself_has_zero_kl(tok, models):
    _, student = models
    fit = teacher_fit(student, sequences(tok), student, pad_id=tok.pad_token_id, vocab_size=len(tok))
    assert abs(fit.kl) < 1e-6 and fit.student_ce == pytest.approx(fit.teacher_ce, rel=1e-6)


def test_padding_does_not_change_the_value(tok, models):
    """Pad id that is a real token: attention and labels must mask it (values equal for any pad id)."""
    teacher, student = models
    seqs = sequences(tok, seed=3)
    a = teacher_fit(student, seqs, teacher, pad_id=0, vocab_size=len(tok), batch_size=4)
    b = teacher_fit(student, seqs, teacher, pad_id=100, vocab_size=len(tok), batch_size=4)
    assert a.kl == pytest.approx(b.kl, rel=1e-5) and a.student_ce == pytest.approx(b.student_ce, rel=1e-5)


def test_no_completion_tokens_gives_nan(tok, models):
    teacher, student = models
    fit = teacher_fit(student, [([1, 2], [])], teacher)
    assert fit.tokens == 0 and fit.kl != fit.kl


def test_completion_batch_masks_prompt_and_padding():
    batch = completion_batch([([5, 6], [7, 8]), ([9], [10])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]


def test_encode_completion(tok):
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt, completion = encode_completion(tok, messages, "5")
    assert tok.decode(prompt) == render_chat(tok, messages)
    assert completion == tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    _, cut = encode_completion(tok, messages, "5", stopped=False)
    assert cut == completion[:-1]
    # a final assistant message is a prefill: it belongs to the prompt
    prefilled, _ = encode_completion(tok, messages + [{"role": "assistant", "content": "<think>\n"}], "5")
    assert tok.decode(prefilled).endswith("<|im_start|>assistant\n<think>\n")
