"""The sampled-store loss (``losses.sampled``): its expected gradient over the draws is the full
forward-KL gradient (exact enumeration of the multinomial, and many draws through the capture's own
sampler), its value and gradients on a fixed target against float64, and what it refuses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from distill_plugin.generation.hf import samples_of_head
from distill_plugin.losses.kd import KDSettings
from distill_plugin.losses.sampled import sampled_kd_loss
from distill_plugin.losses.terms import LogitTerms
from distill_plugin.offline.sampled import estimate_logprobs, tally
from distill_plugin.signals import OutputHead, StudentRows, TopKLogprobs


def full_gradient(student_logits, teacher_logp, temperature):
    """float64 reference: d/dz of T²·KL(p‖softmax(z/T)), p = exp(teacher_logp)."""
    z = student_logits.double().clone().requires_grad_(True)
    p = teacher_logp.double().exp()
    kl = (p * (teacher_logp.double() - torch.log_softmax(z / temperature, -1))).sum() * temperature**2
    kl.backward()
    return z.grad


def loss_gradients(z, ids, lps, temperature, **kw):
    """Gradient of ``sampled_kd_loss`` (normaliser 1) w.r.t. each row's logits: the student head is the
    identity, so the rows are the logits."""
    rows = z.clone().float().requires_grad_(True)
    out = sampled_kd_loss(rows, torch.eye(z.shape[1]), torch.as_tensor(ids), torch.as_tensor(lps).float(), None,
                          KDSettings(temperature=temperature), capture_temperature=temperature, normalizer=1.0, **kw)
    out.loss.backward()
    return rows.grad.double(), out


def compositions(total, parts):
    """Every vector of ``parts`` non-negative ints summing to ``total``."""
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        yield [edges[i + 1] - edges[i] - 1 for i in range(parts)]


@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_expected_gradient_is_the_full_gradient_exactly(proposal_temperature, temperature):
    """Σ over every outcome c of S = 4 draws from q (V = 5) of Multinomial(c; S, q) · ∇loss(p̂(c))
    equals the full-distribution gradient (float64 reference) to float32 rounding."""
    V, S = 5, 4
    gen = torch.Generator().manual_seed(3)
    teacher_logp = torch.log_softmax(torch.randn(V, dtype=torch.float64, generator=gen) * 2, -1)
    z = torch.randn(1, V, dtype=torch.float64, generator=gen)
    logq = torch.log_softmax(teacher_logp / proposal_temperature, -1)
    outcomes = np.array(list(compositions(S, V)))  # [O, V], 70 outcomes
    pmf = np.array([math.factorial(S) / np.prod([math.factorial(c) for c in row]) for row in outcomes]) \
        * np.exp(outcomes @ logq.numpy())
    assert math.isclose(pmf.sum(), 1.0, rel_tol=1e-12)
    ids = np.tile(np.arange(V), (len(outcomes), 1))
    lps = estimate_logprobs(outcomes, np.tile((teacher_logp - logq).numpy(), (len(outcomes), 1)).astype(np.float32), S)
    grads, _ = loss_gradients(z.repeat(len(outcomes), 1), ids, lps, temperature)
    expected = (torch.from_numpy(pmf)[:, None] * grads).sum(0)
    reference = full_gradient(z[0], teacher_logp, temperature)
    torch.testing.assert_close(expected, reference, rtol=0, atol=2e-6)
    if proposal_temperature != 1.0:  # the importance weights are what makes it unbiased
        unweighted, _ = loss_gradients(z.repeat(len(outcomes), 1), ids, estimate_logprobs(
            outcomes, np.zeros_like(lps), S), temperature)
        assert (torch.from_numpy(pmf)[:, None] * unweighted).sum(0).sub(reference).abs().max() > 1e-2


@pytest.mark.parametrize("proposal_temperature", [1.0, 1.5])
def test_mean_gradient_over_many_draws_of_the_capture_sampler(proposal_temperature):
    """R = 4,000 positions, each S = 12 draws through the capture's ``samples_of_head`` (V = 64, T = 1),
    tallied and stored as the store does: the mean gradient is within 5 standard errors of the full
    gradient, the standard error exact from the multinomial: Var(g_j) = aⱼᵀ(diag q − qqᵀ)aⱼ / S with
    a_ij = w_i·softmax(z)_j − δ_ij·w_j."""
    V, S, R = 64, 12, 4000
    gen = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(V, dtype=torch.float64, generator=gen) * 1.5 - 0.05 * torch.arange(V)
    z = torch.randn(V, dtype=torch.float64, generator=gen)
    uniforms = np.random.default_rng(1).random((R, S))
    head = OutputHead(weight=torch.eye(V))
    draws, log_w = samples_of_head(teacher_logits.float().repeat(R, 1), head, uniforms, 1.0, proposal_temperature, 1024)
    ids, counts, lw = tally(draws.numpy(), log_w.numpy() if proposal_temperature != 1.0 else None)
    grads, _ = loss_gradients(z.repeat(R, 1), ids, estimate_logprobs(counts, lw, S), 1.0)
    p = torch.softmax(teacher_logits.float(), -1).double()  # the sampler's fp32 distribution
    q = torch.softmax(torch.log(p) / proposal_temperature, -1)
    w, qs = p / q, torch.softmax(z, -1)
    a = w[:, None] * qs[None, :] - torch.diag(w)  # [i, j]
    var = ((a * (q[:, None] * a)).sum(0) - (q @ a) ** 2) / S
    se = (var / R).sqrt()
    error = grads.mean(0) - full_gradient(z, torch.log(p), 1.0)
    assert (error.abs() <= 5 * se + 1e-7).all(), (error / se).abs().max()
    assert (counts.sum(1) == S).all()


def reference_loss(rows, weight, ids, lps, targets, settings):
    """float64: (kd_scale·Σ_i −Σ_j p̂_ij log softmax(z_i/T)_j + ce_weight·Σ_i CE_i) / N, z = rows Wᵀ."""
    z = rows @ weight.T
    logq = torch.log_softmax(z / settings.temperature, -1)
    p_hat = torch.where(torch.isfinite(lps), lps.exp(), torch.zeros_like(lps))
    kd = -(p_hat * logq.gather(1, ids)).sum()
    ce = torch.nn.functional.cross_entropy(z, targets, reduction="sum")
    return (settings.kd_scale * kd + settings.ce_weight * ce) / len(rows), kd / len(rows), ce / len(rows)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_values_and_gradients_on_a_fixed_target_match_float64(chunk_size):
    V, H, N, S = 30, 8, 7, 6
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(N, H, dtype=torch.float64, generator=gen)
    weight = torch.randn(V, H, dtype=torch.float64, generator=gen)
    targets = torch.randint(0, V, (N,), generator=gen)
    draws = torch.randint(0, V, (N, S), generator=gen).numpy()
    ids, counts, lw = tally(draws, np.random.default_rng(2).normal(size=(N, S)).astype(np.float32))
    lps = torch.from_numpy(estimate_logprobs(counts, lw, S))
    ids, lps = torch.from_numpy(ids), lps.clone()
    lps[3] = -math.inf  # a row without a teacher entry: CE only
    settings = KDSettings(temperature=2.0, kd_weight=0.7, ce_weight=0.3)
    ours_rows, ours_w = rows.float().requires_grad_(True), weight.float().requires_grad_(True)
    out = sampled_kd_loss(ours_rows, ours_w, ids, lps, targets, settings, capture_temperature=2.0,
                          chunk_size=chunk_size)
    out.loss.backward()
    ref_rows, ref_w = rows.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ref, ref_kd, ref_ce = reference_loss(ref_rows, ref_w, ids, lps.double(), targets, settings)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kd.double(), ref_kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.ce.double(), ref_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_rows.grad.double(), ref_rows.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours_w.grad.double(), ref_w.grad, rtol=1e-4, atol=1e-6)
    # through the loss term, as the trainer runs it: a sampled TopKLogprobs signal reaches this loss
    head = OutputHead(weight=weight.float())
    term = LogitTerms(settings)(StudentRows(rows.float(), targets, head), TopKLogprobs(ids, lps, 2.0, sampled=True))
    torch.testing.assert_close(term.objective.double() / N, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"])
def test_refuses_what_a_sampled_target_cannot_estimate(divergence):
    ids, lps = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)
    args = (torch.randn(2, 4), torch.randn(10, 4), ids, lps)
    with pytest.raises(ValueError, match=f"divergence '{divergence}' with a sampled store is biased"):
        sampled_kd_loss(*args, settings=KDSettings(divergence=divergence))
    with pytest.raises(ValueError, match="set temperature to 1 or capture at 2"):
        sampled_kd_loss(*args, settings=KDSettings(temperature=2.0), capture_temperature=1.0)
