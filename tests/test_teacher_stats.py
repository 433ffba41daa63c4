"""``distill.log_teacher_stats``: teacher entropy and top-1 agreement against a float64 reference,
logged by name in training and evaluation, and training nothing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill_plugin.args import DistillConfig
from distill_plugin.losses.stats import TeacherStatsTerm
from distill_plugin.signals import DenseLogits, OutputHead, StudentRows, TopKLogprobs
from test_trainer import load_pair, make_trainer, uneven_rows

N, H_S, H_T, V, V_T = 37, 12, 16, 50, 53  # the teacher's head has 3 padding rows beyond V


def reference(z_s: torch.Tensor, teacher_logp: torch.Tensor, teacher_top1: torch.Tensor) -> tuple[float, float]:
    """Σ_i −Σ_v P log P and Σ_i [argmax z_s = teacher's top-1], in float64."""
    p = teacher_logp.exp()
    entropy = -(p * teacher_logp.masked_fill(~torch.isfinite(teacher_logp), 0.0)).sum()
    return float(entropy), float((z_s.argmax(-1) == teacher_top1).sum())


def student_side(g: torch.Generator) -> StudentRows:
    rows, weight = torch.randn(N, H_S, generator=g), torch.randn(V, H_S, generator=g)
    return StudentRows(rows, torch.zeros(N, dtype=torch.long), OutputHead(weight, torch.randn(V, generator=g)))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_dense_stats_match_a_float64_reference(temperature):
    g = torch.Generator().manual_seed(0)
    teacher = OutputHead(torch.randn(V_T, H_T, generator=g) * 2, torch.randn(V_T, generator=g), softcap=5.0)
    signal = DenseLogits(torch.randn(N, H_T, generator=g), teacher, vocab_size=V)
    # a student near the teacher (a noisy copy): some rows agree, some do not
    student = StudentRows(signal.rows + 0.7 * torch.randn(N, H_T, generator=g), torch.zeros(N, dtype=torch.long),
                          OutputHead(teacher.weight[:V].clone(), teacher.bias[:V].clone()))
    term = TeacherStatsTerm(temperature, chunk_size=16)  # 37 rows: chunks of 16, 16, 5
    out = term(student, signal)
    z_s = student.rows.double() @ student.head.weight.double().T + student.head.bias.double()
    z_t = signal.rows.double() @ teacher.weight[:V].double().T + teacher.bias[:V].double()
    z_t = 5.0 * torch.tanh(z_t / 5.0)
    expected = reference(z_s, F.log_softmax(z_t / temperature, -1), z_t.argmax(-1))
    torch.testing.assert_close(out.sums.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    assert 0 < expected[1] < N  # neither all nor none agree: the comparison can fail either way
    assert not out.objective.requires_grad and float(out.objective) == 0.0


def test_topk_stats_match_a_float64_reference():
    """Top-k captured at T_c = 2 and re-tempered to T = 1 over the k entries + the tail bucket; a row
    without an entry (all −inf) counts 0."""
    g = torch.Generator().manual_seed(1)
    student = student_side(g)
    capture_t, k = 2.0, 6
    full = F.log_softmax(torch.randn(N, V, generator=g).double() * 3 / capture_t, -1)
    logprobs, ids = full.topk(k, -1)
    ids, logprobs = ids.flip(-1), logprobs.flip(-1)  # stored order is not assumed sorted
    z_s = student.rows.double() @ student.head.weight.double().T + student.head.bias.double()
    logprobs[4] = -math.inf
    ids[4] = z_s[4].argmax()  # the row without an entry would "agree" if it were counted
    signal = TopKLogprobs(ids, logprobs.float(), capture_temperature=capture_t)
    out = TeacherStatsTerm(1.0, chunk_size=16)(student, signal)
    tail = torch.log1p(-logprobs.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-12))
    bucket = F.log_softmax(torch.cat([logprobs, tail], -1) * capture_t, -1)  # T_c / T = 2
    top1 = ids.gather(1, logprobs.argmax(-1, keepdim=True)).squeeze(1)
    keep = torch.ones(N, dtype=torch.bool)
    keep[4] = False
    expected = reference(z_s[keep], bucket[keep], top1[keep])
    torch.testing.assert_close(out.sums.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_logged_by_name_in_training_and_evaluation_and_train_nothing(tiny_pair, tmp_path):
    tok, teacher, student = load_pair(tiny_pair)
    data = uneven_rows()
    base = DistillConfig(teacher="tiny", kd_weight=0.7, ce_weight=0.3, temperature=2.0)
    runs = {}
    for stats in (False, True):
        model = copy.deepcopy(student)
        config = base.model_copy(update={"log_teacher_stats": stats})
        trainer = make_trainer(tmp_path / str(stats), tok, teacher, model, data, 2, 2, config=config,
                               eval_strategy="steps", eval_steps=1)
        trainer.train()
        runs[stats] = (model.lm_head.weight.detach().clone(), trainer.state.log_history)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=0, atol=0)  # weight 0: the same step
    assert not (runs[False][0] == student.lm_head.weight).all()
    train = next(h for h in runs[True][1] if "loss" in h)
    evaluation = next(h for h in runs[True][1] if "eval_loss" in h)
    for logs, prefix in ((train, ""), (evaluation, "eval_")):
        assert 0 < logs[f"{prefix}teacher_entropy"] < math.log(len(tok)) + 1e-6
        assert 0 <= logs[f"{prefix}top1_agreement"] <= 1
    assert "teacher_entropy" not in next(h for h in runs[False][1] if "loss" in h)


def test_refused_across_tokenizers():
    with pytest.raises(ValueError, match="log_teacher_stats"):
        DistillConfig(teacher="t", cross_tokenizer="uld", ce_weight=1.0, log_teacher_stats=True)
