"""Hidden-state loss: every variant's value and gradients (student rows and projector) against a
float64 reference written from the formulas, and the term's normalisation over pairs."""

from __future__ import annotations

import math

import pytest
import torch

from distill_plugin.hidden.projector import Projectors
from distill_plugin.losses.hidden import HiddenTerm, hidden_loss_sum
from distill_plugin.losses.terms import run_terms
from distill_plugin.signals import HiddenStates, OutputHead, StudentRows

VARIANTS = ("cosine", "mse", "normalized_mse")


def reference_row(x, y, loss):
    """ℓ(x, y) for one row, element by element in float64 (no torch.nn.functional)."""
    x, y, width = x.double(), y.double(), x.shape[-1]
    if loss == "mse":
        return sum((x[d] - y[d]) ** 2 for d in range(width)) / width
    if loss == "normalized_mse":

        def standardise(v):
            mean = sum(v[d] for d in range(width)) / width
            var = sum((v[d] - mean) ** 2 for d in range(width)) / width
            return [(v[d] - mean) / torch.sqrt(var + 1e-6) for d in range(width)]

        a, b = standardise(x), standardise(y)
        return sum((a[d] - b[d]) ** 2 for d in range(width)) / width
    dot = sum(x[d] * y[d] for d in range(width))
    norms = torch.sqrt(sum(x[d] ** 2 for d in range(width))) * torch.sqrt(sum(y[d] ** 2 for d in range(width)))
    return 1 - dot / norms


def reference_sum(student_rows, weights, biases, teacher_rows, loss):
    """Σ_i (1/P) Σ_p ℓ(W_p x_{p,i} + b_p, y_{p,i}) in float64."""
    total = 0
    for x, w, b, y in zip(student_rows, weights, biases, teacher_rows):
        projected = x.double() @ w.double().t() + b.double()
        total = total + sum(reference_row(projected[i], y[i], loss) for i in range(x.shape[0]))
    return total / len(student_rows)


def make_case(rows=7, pairs=2, student_width=5, teacher_width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(rows, student_width, generator=g) for _ in range(pairs)]
    teacher = [3 * torch.randn(rows, teacher_width, generator=g) + 1 for _ in range(pairs)]
    return student, teacher


@pytest.mark.parametrize("loss", VARIANTS)
def test_term_value_and_gradients_match_float64_reference(loss):
    student, teacher = make_case()
    pairs = ((1, 2), (2, 4))
    torch.manual_seed(0)
    projector = Projectors(len(pairs), 5, 6)
    term = HiddenTerm(pairs, projector, loss, weight=0.7)
    rows = [s.clone().requires_grad_(True) for s in student]
    out = term(
        StudentRows(torch.zeros(7, 5), torch.zeros(7, dtype=torch.long), OutputHead(torch.zeros(3, 5)), dict(zip((1, 2), rows))),
        HiddenStates(dict(zip((2, 4), teacher))),
    )
    out.objective.backward()

    ref_rows = [s.double().requires_grad_(True) for s in student]
    ref_w = [m.weight.detach().double().requires_grad_(True) for m in projector.maps]
    ref_b = [m.bias.detach().double().requires_grad_(True) for m in projector.maps]
    ref = reference_sum(ref_rows, ref_w, ref_b, teacher, loss)
    (0.7 * ref).backward()

    torch.testing.assert_close(out.sums.double(), ref.detach().reshape(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.objective.double(), 0.7 * ref.detach(), rtol=1e-5, atol=1e-6)
    for got, want in zip(rows, ref_rows):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-7)
    for linear, w, b in zip(projector.maps, ref_w, ref_b):
        torch.testing.assert_close(linear.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(linear.bias.grad.double(), b.grad, rtol=1e-4, atol=1e-7)
        assert linear.weight.grad.abs().sum() > 0


def test_identical_states_cost_nothing_and_scaling_matters_only_for_mse():
    x = torch.randn(4, 8)
    for loss in VARIANTS:
        assert hidden_loss_sum([x], [x.clone()], loss).item() == pytest.approx(0, abs=1e-5)
    # cosine and normalized_mse are scale-free per row; mse is not
    assert hidden_loss_sum([x], [5 * x], "cosine").item() == pytest.approx(0, abs=1e-5)
    assert hidden_loss_sum([x], [5 * x], "normalized_mse").item() == pytest.approx(0, abs=1e-4)
    assert hidden_loss_sum([x], [5 * x], "mse").item() == pytest.approx(16 * x.pow(2).mean(-1).sum().item(), rel=1e-5)


def test_sum_over_rows_mean_over_pairs():
    """Rows add up (the trainer divides by N); pairs average, so adding a pair keeps the scale."""
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    one = hidden_loss_sum([x], [y], "mse")
    assert hidden_loss_sum([x, x], [y, y], "mse").item() == pytest.approx(one.item())
    assert hidden_loss_sum([x[:3]], [y[:3]], "mse") + hidden_loss_sum([x[3:]], [y[3:]], "mse") == pytest.approx(one.item())
    # orthogonal rows have cosine loss 1 each
    e = torch.eye(4)
    assert hidden_loss_sum([e[:2]], [e[2:]], "cosine").item() == pytest.approx(2.0)


def test_term_runs_next_to_the_logit_term_and_is_named_hidden():
    from distill_plugin.losses import KDSettings, LogitTerms
    from distill_plugin.losses.terms import component_names
    from distill_plugin.signals import DenseLogits

    g = torch.Generator().manual_seed(1)
    rows, head_s, head_t = torch.randn(5, 4, generator=g), torch.randn(11, 4, generator=g), torch.randn(11, 6, generator=g)
    teacher_rows = torch.randn(5, 6, generator=g)
    hidden = HiddenTerm(((2, 3),), Projectors(1, 4, 6), "mse", weight=2.0)
    logit = LogitTerms(KDSettings(kd_weight=1.0, ce_weight=0.5))
    student = StudentRows(rows, torch.randint(0, 11, (5,), generator=g), OutputHead(head_s), {2: rows})
    signals = {DenseLogits: DenseLogits(teacher_rows, OutputHead(head_t)), HiddenStates: HiddenStates({3: teacher_rows})}
    out = run_terms([logit, hidden], student, signals)
    assert component_names([logit, hidden]) == ("kd", "ce", "hidden")
    alone = run_terms([logit], student, signals)
    assert out.objective.item() == pytest.approx(alone.objective.item() + 2.0 * out.sums[2].item(), rel=1e-6)
    assert math.isfinite(out.sums[2].item()) and out.sums[2] > 0


def test_projector_none_needs_equal_widths_and_linear_starts_at_identity():
    with pytest.raises(ValueError, match="hidden_projector: none needs equal widths.*32.*48"):
        Projectors(2, 32, 48, "none")
    x = torch.randn(3, 8)
    assert torch.equal(Projectors(1, 8, 8, "none")([x])[0], x)
    torch.testing.assert_close(Projectors(1, 8, 8, "linear")([x])[0], x)
    with pytest.raises(ValueError, match="hidden_loss must be one of"):
        HiddenTerm(((1, 1),), Projectors(1, 8, 8), "l1")
