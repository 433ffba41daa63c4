"""The loss matrix: dtype × odd shapes × bias on/off × soft-cap × ignore_index patterns, for the
online and the top-k loss, on the closed-form (forward KL) and autograd (JSD) chunk paths.

Rows are picked with ``select_rows`` from [B, T, H] hidden states; the float64 reference
(``reference.py``) picks them with a plain loop over ``labels[b, t+1] != -100``, so the shift and
the masking are checked too. Tolerances: fp32 rtol 1e-4 (values) and 1e-3 (gradients, absolute
floor 1e-5·max|grad|); bf16 (matmuls in bf16, maths in fp32) 2e-2 on values, 5e-2 on gradients
with a floor of 2e-2·max|grad|.
"""

from __future__ import annotations

import pytest
import torch

from distill_plugin.losses import KDSettings, online_kd_loss, select_rows
from distill_plugin.losses.topk import topk_kd_loss

from reference import reference_loss, reference_topk, stored_topk

IGNORE = -100
SHAPES = {"B3T11H13V37": (3, 11, 13, 37), "B2T7H5V101": (2, 7, 5, 101)}
TOLERANCE = {torch.float32: (1e-4, 1e-3, 1e-5), torch.bfloat16: (2e-2, 5e-2, 2e-2)}


def make_labels(B, T, V, pattern, g):
    labels = torch.randint(0, V, (B, T), generator=g)
    if pattern == "prompt_prefix":  # a prompt of varying length per row, then the answer
        for b in range(B):
            labels[b, : 2 + 2 * b] = IGNORE
    else:  # holes, a fully ignored row and an ignored last position
        labels[:, ::3] = IGNORE
        labels[-1] = IGNORE
        labels[0, -1] = IGNORE
    return labels


def reference_rows(hidden, labels):
    """Loop form of the shift: hidden[b, t] is kept when labels[b, t+1] is supervised."""
    B, T = labels.shape
    keep = [(b, t) for b in range(B) for t in range(T - 1) if labels[b, t + 1] != IGNORE]
    rows = torch.stack([hidden[b, t] for b, t in keep])
    return rows, torch.tensor([int(labels[b, t + 1]) for b, t in keep])


def assert_close(ours, ref, rtol, floor):
    torch.testing.assert_close(ours.double(), ref.double(), rtol=rtol, atol=floor * ref.abs().max().item())


@pytest.mark.parametrize("kind", ["online", "topk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("cap", [None, 3.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("name", ["forward_kl", "jsd"])
@pytest.mark.parametrize("pattern", ["prompt_prefix", "holes"])
def test_loss_matrix(kind, dtype, shape, bias, cap, name, pattern):
    B, T, H, V = shape
    g = torch.Generator().manual_seed(B * T * H * V + len(pattern))
    hidden = (torch.randn(B, T, H, generator=g) * 2).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_(True)
    b_s = (torch.randn(V, generator=g)).to(dtype).requires_grad_(True) if bias else None
    h_t = (torch.randn(B, T, H + 6, generator=g) * 2).to(dtype)
    w_t = (torch.randn(V, H + 6, generator=g) * 0.5).to(dtype)
    b_t = torch.randn(V, generator=g).to(dtype) if bias else None
    labels = make_labels(B, T, V, pattern, g)
    s = KDSettings(divergence=name, temperature=1.5, kd_weight=0.6, ce_weight=0.4)

    rows, targets, mask = select_rows(hidden, labels)
    rows_t = h_t[:, :-1][mask]
    normalizer = int(mask.sum()) + 3  # N counts the whole step's tokens, not just this batch
    if kind == "online":
        out = online_kd_loss(rows, weight, rows_t, w_t, targets, s, normalizer, chunk_size=4, student_bias=b_s,
                             teacher_bias=b_t, student_softcap=cap, teacher_softcap=cap)
    else:
        ids, lps = stored_topk(rows_t, w_t, 6, 1.0, b_t, cap)
        out = topk_kd_loss(rows, weight, ids, lps, targets, s, "bucket", 1.0, normalizer, chunk_size=4,
                           student_bias=b_s, student_softcap=cap)
    out.loss.backward()

    leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight) + ((b_s,) if bias else ())]
    ref_rows, ref_targets = reference_rows(leaves[0], labels)
    assert torch.equal(ref_targets, targets)
    ref_bias = leaves[2] if bias else None
    if kind == "online":
        ref_rows_t, _ = reference_rows(h_t, labels)
        ref = reference_loss(ref_rows, leaves[1], ref_rows_t, w_t, ref_targets, s, normalizer, V,
                             ref_bias, b_t, cap, cap)
    else:
        ref = reference_topk(ref_rows, leaves[1], ids, lps, ref_targets, s, "bucket", 1.0, normalizer, ref_bias, cap)
    ref[0].backward()

    value_rtol, grad_rtol, floor = TOLERANCE[dtype]
    for ours, expected in zip((out.loss, out.kd, out.ce), ref):
        torch.testing.assert_close(ours.double(), expected, rtol=value_rtol, atol=1e-6)
    for ours, leaf in zip((hidden, weight, b_s), leaves):
        assert ours.grad.dtype == ours.dtype
        assert_close(ours.grad, leaf.grad, grad_rtol, floor)
