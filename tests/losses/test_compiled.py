"""The fused (torch.compile on CUDA) forward-KL chunk maths against a float64 full-logit reference.

On the CPU the pure function runs eagerly (what inductor compiles on CUDA); on a GPU machine the
CUDA cases also run the compiled path end to end through ``online_kd_loss`` and compare it with the
eager one. Tolerances: fp32 rtol 1e-4; bf16 (logits rounded to bf16 before the maths) 2e-2.
"""

import pytest
import torch
import torch.nn.functional as F

from distill_plugin.losses import KDSettings, online_kd_loss
from distill_plugin.losses.compiled import accumulate_grad_weight, forward_kl_chunk

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(zs, zt, targets, kd_coef, ce_coef, temperature, teacher_cap):
    """Objective, kd, ce and d objective / d zs, by float64 autograd on textbook formulas."""
    z = zs.double().detach().requires_grad_(True)
    t = zt.double()
    if teacher_cap:
        t = teacher_cap * torch.tanh(t / teacher_cap)
    p = torch.softmax(t / temperature, -1)
    log_q = torch.log_softmax(z / temperature, -1)
    kd = (p * (p.log() - log_q)).sum()
    ce = F.cross_entropy(z, targets, reduction="sum")
    # kd_coef carries 1/T (the chain rule through z/T is in autograd here, so divide it back out)
    objective = kd_coef * temperature * kd + ce_coef * ce
    (grad,) = torch.autograd.grad(objective, z)
    return kd.item(), ce.item(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,teacher_cap,with_ce", [(1.0, None, True), (2.0, None, True), (1.0, 30.0, False), (0.7, 5.0, True)])
def test_forward_kl_chunk_matches_reference(device, dtype, temperature, teacher_cap, with_ce):
    g = torch.Generator().manual_seed(0)
    rows, vocab = 13, 97  # odd shapes on purpose
    zs = (torch.randn(rows, vocab, generator=g) * 3).to(dtype).to(device)
    zt = (torch.randn(rows, vocab, generator=g) * 3).to(dtype).to(device)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(device)
    kd_coef, ce_coef = 0.8 / temperature / rows, (0.3 if with_ce else 0.0) / rows
    kd, ce, grad = forward_kl_chunk(
        zs, zt, targets, torch.tensor(kd_coef, device=device), torch.tensor(ce_coef, device=device),
        1.0 / temperature, teacher_cap, with_ce,
    )  # fmt: skip
    ref_kd, ref_ce, ref_grad = reference(zs, zt, targets, kd_coef, ce_coef, temperature, teacher_cap)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert grad.dtype == dtype
    assert kd.item() == pytest.approx(ref_kd, rel=tol)
    assert ce.item() == pytest.approx(ref_ce if with_ce else 0.0, rel=tol, abs=1e-6)
    torch.testing.assert_close(grad.double().cpu(), ref_grad.cpu(), rtol=tol, atol=tol * ref_grad.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_grad_weight_is_fp32_sum(device):
    g = torch.Generator().manual_seed(1)
    acc = torch.zeros(31, 8, device=device)
    total = torch.zeros(31, 8, dtype=torch.float64)
    for _ in range(3):
        grad = torch.randn(5, 31, generator=g).to(torch.bfloat16)
        hidden = torch.randn(5, 8, generator=g).to(torch.bfloat16)
        accumulate_grad_weight(acc, grad.to(device), hidden.to(device))
        total += grad.double().t() @ hidden.double()
    assert acc.dtype == torch.float32
    torch.testing.assert_close(acc.double().cpu(), total, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled path runs on CUDA only")
@pytest.mark.parametrize("ce_weight,temperature", [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0)])
def test_compiled_online_loss_matches_eager_on_cuda(monkeypatch, ce_weight, temperature):
    g = torch.Generator().manual_seed(2)
    rows, hs, ht, vocab = 300, 64, 96, 1000  # 300 rows in chunks of 128: a ragged last chunk
    make = lambda *s: (torch.randn(*s, generator=g) * 0.5).cuda().to(torch.bfloat16)
    h_s, w_s, h_t, w_t = make(rows, hs), make(vocab, hs), make(rows, ht), make(vocab, ht)
    targets = torch.randint(0, vocab, (rows,), generator=g).cuda()
    settings = KDSettings(temperature=temperature, ce_weight=ce_weight)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("DISTILL_PLUGIN_COMPILE", flag)
        hs_, ws_ = h_s.clone().requires_grad_(True), w_s.clone().requires_grad_(True)
        out = online_kd_loss(hs_, ws_, h_t, w_t, targets, settings, normalizer=250.0, chunk_size=128)
        out.loss.backward()
        results.append((out.loss.float(), out.kd.float(), out.ce.float(), hs_.grad.float(), ws_.grad.float()))
    for compiled, eager in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=1e-3)
