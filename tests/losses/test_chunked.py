"""The chunked loop's values-only path: under ``torch.no_grad`` (eval) no gradient work is done."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distill_plugin.losses import KDSettings, online_kd_loss
from distill_plugin.losses.topk import topk_kd_loss

from reference import make_case, stored_topk

MATMULS = {"mm", "addmm", "addmm_", "bmm", "matmul", "linear"}


class CountWork(TorchDispatchMode):
    """Counts matmul kernels and new (non-view) fp32 tensors shaped like the student's lm_head [V, H]."""

    def __init__(self, weight_shape):
        super().__init__()
        self.buffer, self.matmuls, self.weight_buffers = (tuple(weight_shape), torch.float32), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__
        self.matmuls += name in MATMULS
        if isinstance(out, torch.Tensor) and not func.is_view and (tuple(out.shape), out.dtype) == self.buffer:
            self.weight_buffers += 1
        return out


def run(kind, name, no_grad):
    h_s, w_s, h_t, w_t, targets = make_case(rows=37)
    s = KDSettings(divergence=name, ce_weight=0.5)
    ids, lps = stored_topk(h_t, w_t, 8, 1.0)
    counter = CountWork(w_s.shape)
    with counter, torch.set_grad_enabled(not no_grad):
        if kind == "online":
            out = online_kd_loss(h_s, w_s, h_t, w_t, targets, s, chunk_size=10)
        else:
            out = topk_kd_loss(h_s, w_s, ids, lps, targets, s, chunk_size=10)
    return out, counter


@pytest.mark.parametrize("kind", ["online", "topk"])
@pytest.mark.parametrize("name", ["forward_kl", "jsd"])  # closed-form and autograd chunk paths
def test_no_grad_computes_values_only(kind, name):
    chunks = 4  # 37 rows in chunks of 10
    logits_gemms = chunks * (2 if kind == "online" else 1)  # student (+ teacher) logits per chunk
    out, counter = run(kind, name, no_grad=True)
    assert counter.matmuls == logits_gemms
    assert counter.weight_buffers == 0  # no fp32 [V, H] grad-weight accumulator
    assert not out.loss.requires_grad
    with_grad, grad_counter = run(kind, name, no_grad=False)
    # The training path does the two gradient GEMMs per chunk on top (the test can fail).
    assert grad_counter.matmuls == logits_gemms + 2 * chunks and grad_counter.weight_buffers >= 1
    for ours, expected in zip(out, with_grad):
        torch.testing.assert_close(ours, expected.detach())
