"""The sparse top-k KD loss against a plain float64 reference (values and gradients) and the dense loss.

Tolerances: values rtol 1e-4; gradients rtol 1e-3 with an absolute floor of 1e-4·max|grad|.
"""

import pytest
import torch

from distill_plugin.losses import DIVERGENCES, KDSettings, online_kd_loss
from distill_plugin.losses.topk import log1mexp, topk_kd_loss

from reference import make_case, reference_topk, stored_topk


CASES = [(d, b) for d in DIVERGENCES for b in ((0.0, 0.5, 1.0) if d == "jsd" else (0.5,))]


@pytest.mark.parametrize("name,beta", CASES)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("temperature,t_cap,chunk", [(1.0, 1.0, 8), (2.0, 1.0, 37), (1.0, 1.5, 5)])
def test_values_and_grads_match_reference(name, beta, tail, temperature, t_cap, chunk):
    h_s, w_s, h_t, w_t, targets = make_case()
    ids, lps = stored_topk(h_t, w_t, k=8, capture_temperature=t_cap)
    lps[3, 5:] = -torch.inf  # a row with only 5 stored entries (padding inside k)
    s = KDSettings(divergence=name, beta=beta, temperature=temperature, kd_weight=0.6, ce_weight=0.4)
    out = topk_kd_loss(h_s, w_s, ids, lps, targets, s, tail, t_cap, normalizer=40, chunk_size=chunk)
    out.loss.backward()
    h2, w2 = h_s.detach().clone().requires_grad_(True), w_s.detach().clone().requires_grad_(True)
    ref, _, _ = reference_topk(h2, w2, ids, lps, targets, s, tail, t_cap, 40)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    # fp32 vs fp64: the tail bucket's log(1 − Σq) loses a few digits when Σq → 1, so gradients are
    # compared at 1e-3 relative with an absolute floor of 1e-4 of the largest entry.
    for ours, ref_grad in ((h_s.grad, h2.grad), (w_s.grad, w2.grad)):
        floor = 1e-4 * ref_grad.abs().max().item()
        torch.testing.assert_close(ours, ref_grad.float(), rtol=1e-3, atol=floor)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_full_support_bucket_equals_online_loss(name):
    """With k = V the tail is empty and the sparse loss must equal the dense online loss."""
    h_s, w_s, h_t, w_t, targets = make_case()
    s = KDSettings(divergence=name, temperature=2.0, ce_weight=0.3)
    ids, lps = stored_topk(h_t, w_t, k=w_t.shape[0], capture_temperature=2.0)
    sparse = topk_kd_loss(h_s, w_s, ids, lps, targets, s, "bucket", capture_temperature=2.0)
    dense = online_kd_loss(h_s, w_s, h_t, w_t, targets, s)
    torch.testing.assert_close(sparse.loss, dense.loss, rtol=1e-4, atol=1e-5)


def test_rows_without_teacher_targets_get_ce_only_and_no_nan():
    h_s, w_s, h_t, w_t, targets = make_case(rows=6)
    ids, lps = stored_topk(h_t, w_t, k=4, capture_temperature=1.0)
    lps[2] = -torch.inf  # e.g. the last token of a packed document
    s = KDSettings(kd_weight=1.0, ce_weight=1.0)
    out = topk_kd_loss(h_s, w_s, ids, lps, targets, s)
    out.loss.backward()
    assert torch.isfinite(h_s.grad).all() and torch.isfinite(w_s.grad).all()
    keep = torch.tensor([0, 1, 3, 4, 5])
    alone = topk_kd_loss(h_s.detach()[keep], w_s.detach(), ids[keep], lps[keep], None, KDSettings(), normalizer=6)
    torch.testing.assert_close(out.kd, alone.kd)


def test_log1mexp_is_stable_at_both_ends():
    import mpmath

    mpmath.mp.dps = 60

    points = [-1e-10, -1e-3, -0.5, -5.0, -50.0]
    exact = torch.tensor([float(mpmath.log(1 - mpmath.exp(mpmath.mpf(v)))) for v in points], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(torch.tensor(points, dtype=torch.float64)), exact, rtol=1e-9, atol=0)
    assert torch.isfinite(log1mexp(torch.tensor([0.0]))).all()
