"""The fused chunked losses against a plain full-logit reference, for values and gradients.

The float64 reference is ``tests/losses/reference.py``.
Tolerances: fp32 runs agree with the fp64 reference to rtol 1e-4 / atol 1e-6 on values and
gradients; bf16 runs (matmul in bf16, maths in fp32) to 2e-2 relative.
"""

import math

import pytest
import torch

from distill_plugin.losses import DIVERGENCES, KDSettings, online_kd_loss, select_rows

from reference import make_case, reference_loss


CASES = [(d, b) for d in DIVERGENCES for b in ((0.0, 0.5, 1.0) if d == "jsd" else (0.5,))]


@pytest.mark.parametrize("name,beta", CASES)
@pytest.mark.parametrize("temperature,chunk", [(1.0, 8), (2.0, 37), (0.7, 5)])
def test_values_and_grads_match_reference(name, beta, temperature, chunk):
    h_s, w_s, h_t, w_t, targets = make_case()
    s = KDSettings(divergence=name, temperature=temperature, beta=beta, skew=0.1, kd_weight=0.7, ce_weight=0.3)
    out = online_kd_loss(h_s, w_s, h_t, w_t, targets, s, normalizer=50, chunk_size=chunk)
    out.loss.backward()
    g_h, g_w = h_s.grad.clone(), w_s.grad.clone()

    h_s2, w_s2 = h_s.detach().clone().requires_grad_(True), w_s.detach().clone().requires_grad_(True)
    ref, ref_kd, ref_ce = reference_loss(h_s2, w_s2, h_t, w_t, targets, s, 50, 50)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.kd.double(), ref_kd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.ce.double(), ref_ce, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_h, h_s2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_w, w_s2.grad, rtol=1e-4, atol=1e-6)


def test_jsd_interior_tends_to_zero_so_endpoints_are_special_cased():
    """The interior JSD formula → 0 as β → 0/1; β = 0/1 must mean forward/reverse KL instead."""
    h_s, w_s, h_t, w_t, _ = make_case()
    near0 = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings("jsd", beta=1e-6)).kd
    at0 = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings("jsd", beta=0.0)).kd
    fkl = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings("forward_kl")).kd
    rkl = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings("reverse_kl")).kd
    at1 = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings("jsd", beta=1.0)).kd
    assert near0 < 1e-4 * fkl
    torch.testing.assert_close(at0, fkl)
    torch.testing.assert_close(at1, rkl)


def test_temperature_is_applied_inside_the_loss():
    """A trainer once applied T only when sampling: the loss must change with T."""
    h_s, w_s, h_t, w_t, _ = make_case()
    s1 = KDSettings(temperature=1.0, temperature_squared=False)
    s4 = KDSettings(temperature=4.0, temperature_squared=False)
    kd1 = online_kd_loss(h_s, w_s, h_t, w_t, settings=s1).kd
    kd4 = online_kd_loss(h_s, w_s, h_t, w_t, settings=s4).kd
    assert kd4 < 0.5 * kd1  # softer distributions are closer
    scaled = online_kd_loss(h_s, w_s, h_t, w_t, settings=KDSettings(temperature=4.0)).loss
    torch.testing.assert_close(scaled, 16 * kd4)


@pytest.mark.parametrize("loss_kind", ["online", "topk"])
@pytest.mark.parametrize("name", ["forward_kl", "jsd"])  # closed-form and autograd chunk paths
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_weighted_term_gets_gradient(loss_kind, name, temperature):
    """Regression: a refactor once gave the CE term zero gradient while the printed loss looked fine.
    Each term alone must move the student, and with both weighted the gradient is their sum."""
    from distill_plugin.losses.topk import topk_kd_loss

    h_s, w_s, h_t, w_t, targets = make_case()
    topk_lps, topk_ids = torch.log_softmax(h_t @ w_t.t(), -1).topk(8, -1)

    def grad(kd_weight, ce_weight):
        s = KDSettings(name, temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight)
        h = h_s.detach().clone().requires_grad_(True)
        if loss_kind == "online":
            out = online_kd_loss(h, w_s.detach(), h_t, w_t, targets, s, chunk_size=16)
        else:
            out = topk_kd_loss(h, w_s.detach(), topk_ids, topk_lps, targets, s, chunk_size=16)
        out.loss.backward()
        return h.grad

    g_ce, g_kd, g_both = grad(0.0, 1.0), grad(1.0, 0.0), grad(1.0, 1.0)
    assert g_ce.norm() > 0 and g_kd.norm() > 0
    torch.testing.assert_close(g_both, g_ce + g_kd, rtol=1e-4, atol=1e-7)


def test_padded_vocab_compares_over_shared_real_vocab():
    """Same-family checkpoints pad lm_head to different sizes; padding rows are cut, not zero-filled."""
    h_s, w_s, h_t, w_t, targets = make_case(vs=50, vt=64)
    s = KDSettings(divergence="forward_kl", ce_weight=0.5)
    out = online_kd_loss(h_s, w_s, h_t, w_t, targets, s)
    ref, _, _ = reference_loss(h_s, w_s, h_t, w_t, targets, s, h_s.shape[0], 50)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    # Zero-padding the student to 64 would give a different (wrong) answer.
    w_pad = torch.cat([w_s.detach(), torch.zeros(14, w_s.shape[1])])
    wrong, _, _ = reference_loss(h_s, w_pad, h_t, w_t, targets, s, h_s.shape[0], 64)
    assert not math.isclose(wrong.item(), ref.item(), rel_tol=1e-3)


def test_bf16_matmul_fp32_maths_is_close_and_never_negative():
    """bf16 log_softmax once gave negative JSD values; we upcast each chunk to fp32."""
    h_s, w_s, h_t, w_t, targets = make_case(rows=64, dtype=torch.bfloat16)
    for name in ("jsd", "forward_kl"):
        s = KDSettings(divergence=name)
        out = online_kd_loss(h_s, w_s, h_t, w_t, targets, s, chunk_size=16)
        ref, _, _ = reference_loss(h_s.float(), w_s.float(), h_t.float(), w_t.float(), targets, s, 64, 50)
        assert out.loss.dtype == torch.float32 and out.loss.item() >= 0
        torch.testing.assert_close(out.loss.double(), ref, rtol=2e-2, atol=1e-3)


def test_select_rows_uses_next_token_labels():
    """Distribution at t predicts token t+1: row kept where labels[t+1] != -100."""
    hidden = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 3, -100, -100, 4]])
    rows, targets, mask = select_rows(hidden, labels)
    assert rows.squeeze(-1).tolist() == [1.0, 2.0, 5.0, 8.0]
    assert targets.tolist() == [7, 8, 3, 4]
    assert mask.sum() == 4


def test_no_supervised_rows_gives_zero_loss_with_gradient_path():
    h_s, w_s, h_t, w_t, targets = make_case(rows=0)
    out = online_kd_loss(h_s, w_s, h_t, w_t, targets, KDSettings(ce_weight=1.0), normalizer=1)
    out.loss.backward()
    assert out.loss.item() == 0.0 and w_s.grad is not None


@pytest.mark.parametrize("temperature,chunk", [(1.0, 8), (2.0, 37), (0.7, 5)])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_cpu_row_blocks_match_reference(monkeypatch, temperature, chunk, ce_weight):
    """On CPU, forward KL runs each chunk's maths in blocks of ``CPU_BLOCK_ELEMENTS // V`` rows (3
    here: blocks that divide neither the chunk nor the rows), writing the gradient block by block."""
    from distill_plugin.losses import kd

    monkeypatch.setattr(kd, "CPU_BLOCK_ELEMENTS", 3 * 50)
    block_rows = []
    closed_form = kd.forward_kl_closed_form

    def spy(student_logits, *args, **kwargs):
        block_rows.append(student_logits.shape[0])
        return closed_form(student_logits, *args, **kwargs)

    monkeypatch.setattr(kd, "forward_kl_closed_form", spy)
    h_s, w_s, h_t, w_t, targets = make_case()
    s = KDSettings(divergence="forward_kl", temperature=temperature, kd_weight=0.7, ce_weight=ce_weight)
    with torch.no_grad():
        values = online_kd_loss(h_s, w_s, h_t, w_t, targets, s, normalizer=50, chunk_size=chunk)
    out = online_kd_loss(h_s, w_s, h_t, w_t, targets, s, normalizer=50, chunk_size=chunk)
    out.loss.backward()
    assert max(block_rows) == 3 and sum(block_rows) == 2 * h_s.shape[0]  # every row, in blocks, twice

    h_s2, w_s2 = h_s.detach().clone().requires_grad_(True), w_s.detach().clone().requires_grad_(True)
    ref, ref_kd, ref_ce = reference_loss(h_s2, w_s2, h_t, w_t, targets, s, 50, 50)
    ref.backward()
    for got in (values, out):
        torch.testing.assert_close(got.loss.double(), ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.kd.double(), ref_kd, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.ce.double(), ref_ce, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(h_s.grad, h_s2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_s.grad, w_s2.grad, rtol=1e-4, atol=1e-6)
