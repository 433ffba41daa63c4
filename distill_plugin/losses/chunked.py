"""Chunked fused-linear loss: logits → loss → gradients, one chunk of rows at a time.

``fused_linear_loss(hidden, weight, chunk_loss)`` computes ``Σ_chunks chunk_loss(hidden_c @ Wᵀ)``
without ever holding more than one chunk of logits. In the forward pass each chunk's logits are
built in the compute dtype, the chunk loss is differentiated w.r.t. those logits on the spot, and the
gradients w.r.t. ``hidden`` (``g @ W``) and ``weight`` (``gᵀ @ hidden_c``, accumulated in fp32)
are stored; backward only rescales them by the incoming gradient. So the whole loss costs the GEMMs
of one forward and one backward, with peak memory O(chunk · V) instead of O(rows · V), and nothing is
recomputed.

Row convention: callers pass only the rows that carry a target, already shifted, i.e. row i is the
hidden state at position t whose distribution predicts token t+1 (``select_rows`` does this).
"""

from __future__ import annotations

from typing import Callable

import torch

from .compiled import accumulate_grad_weight

# chunk_loss(student_logits_chunk, start, end) -> 1-D tensor; element 0 is the objective whose
# gradient is taken, the rest are detached components reported for logging. A chunk loss that
# knows its gradient in closed form may instead return ``(parts, d objective / d logits)`` (only
# when the logits require grad; on the values-only path it returns ``parts``).
ChunkLoss = Callable[[torch.Tensor, int, int], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def auto_chunk_size(vocab_size: int, target_elements: int = 1 << 26) -> int:
    """Rows per chunk so one fp32 [chunk, V] buffer is ~256 MiB (power of two, 64..4096)."""
    rows = max(64, min(4096, target_elements // max(vocab_size, 1)))
    return 1 << (rows.bit_length() - 1)


def supervised_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """[B, T-1] mask of the positions t whose next token labels[b, t+1] is supervised."""
    return labels[:, 1:] != ignore_index


def select_rows(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Shift and pack: keep hidden[b, t] where labels[b, t+1] is supervised.

    Returns ``(rows [N, H], targets [N], mask [B, T-1])``; row i predicts ``targets[i]``.
    """
    mask = supervised_mask(labels, ignore_index)
    return hidden[:, :-1][mask], labels[:, 1:][mask], mask


def _parts(result) -> torch.Tensor:
    """The ``[objective, *components]`` of a chunk loss's result, detached, in fp32."""
    return (result[0] if isinstance(result, tuple) else result).detach().float()


def _no_rows(hidden, weight, chunk_loss: ChunkLoss) -> torch.Tensor:
    """Zero totals when there is no supervised row (the chunk loss tells how many components)."""
    probe = torch.zeros(0, weight.shape[0], device=hidden.device, dtype=hidden.dtype)
    return _parts(chunk_loss(probe, 0, 0)) * 0


def _values_only(hidden, weight, bias, chunk_loss: ChunkLoss, chunk_size: int):
    """No gradient wanted (eval, ``torch.no_grad``): logits → values, no grad buffers, no extra GEMM."""
    totals = None
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            parts = _parts(chunk_loss(torch.nn.functional.linear(hidden[start:end], weight, bias), start, end))
            totals = parts if totals is None else totals + parts
    totals = _no_rows(hidden, weight, chunk_loss) if totals is None else totals
    return totals[0], totals[1:]


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_loss: ChunkLoss, chunk_size: int):
        rows = hidden.shape[0]
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        totals = None
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            h = hidden[start:end]
            logits = torch.nn.functional.linear(h, weight, bias).detach().requires_grad_(True)
            with torch.enable_grad():
                parts = chunk_loss(logits, start, end)
                if isinstance(parts, tuple):  # closed-form gradient supplied
                    parts, g = parts
                else:
                    (g,) = torch.autograd.grad(parts[0], logits)
            parts = _parts(parts)
            totals = parts if totals is None else totals + parts
            g = g.to(weight.dtype)
            if need_h:
                torch.mm(g, weight, out=grad_h[start:end])  # no [chunk, H] temporary + copy
            if need_w:
                accumulate_grad_weight(grad_w, g, h)  # in place: no fp32 [V, H] temporary
            if need_b:
                grad_b += g.float().sum(0)
            del logits, g
        if totals is None:  # no supervised rows: a zero loss that still connects to the graph
            totals = _no_rows(hidden, weight, chunk_loss)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        components = totals[1:].clone()
        ctx.mark_non_differentiable(components)
        return totals[0].clone(), components

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss
        return (
            grad_h * scale.to(grad_h.dtype) if grad_h is not None else None,
            # scale straight into the weight dtype: no second fp32 [V, H] temporary
            torch.mul(grad_w, scale, out=torch.empty_like(grad_w, dtype=w_dtype)) if grad_w is not None else None,
            (grad_b * scale).to(b_dtype) if grad_b is not None else None,
            None,
            None,
        )


def fused_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    chunk_loss: ChunkLoss,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``chunk_loss`` over ``hidden @ weightᵀ (+ bias)`` in chunks of rows.

    Args:
        hidden: [N, H] rows that carry a target (see ``select_rows``).
        weight: [V, H] output projection (lm_head); may be a row slice of the real parameter.
        chunk_loss: maps a logits chunk [n, V] (compute dtype, upcast inside) and its row range to a
            1-D tensor ``[objective, *components]``. It must be additive over rows.
        chunk_size: rows per chunk; default ``auto_chunk_size(V)``.

    Returns:
        ``(objective, components)``: the summed objective (differentiable w.r.t. ``hidden``,
        ``weight`` and ``bias``) and the summed, detached components. Under ``torch.no_grad`` (or
        when nothing requires grad) only the values are computed: no gradient buffers, no
        gradient GEMMs, and ``chunk_loss`` sees logits that do not require grad.
    """
    chunk_size = int(chunk_size or auto_chunk_size(weight.shape[0]))
    wants_grad = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not (torch.is_grad_enabled() and wants_grad):
        return _values_only(hidden, weight, bias, chunk_loss, chunk_size)
    return _FusedLinearLoss.apply(hidden, weight, bias, chunk_loss, chunk_size)
