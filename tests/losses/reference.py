"""Float64 full-logit references for every loss test, written from the textbook formulas.

They materialise the [rows, V] logits in float64 and use explicit probabilities, independently of
``distill_plugin.losses`` (no chunking, no log-domain tricks, no closed-form gradients). Shift
convention as in the package: row i is the hidden state at position t that predicts token t+1.
"""

from __future__ import annotations

import torch


def logits(hidden, weight, bias=None, cap=None, vocab=None):
    """z = h Wᵀ + b, cut to the first ``vocab`` entries, then cap·tanh(z/cap) when capped (float64)."""
    vocab = vocab or weight.shape[0]
    z = hidden.double() @ weight[:vocab].double().t()
    if bias is not None:
        z = z + bias[:vocab].double()
    return z if not cap else cap * torch.tanh(z / cap)


def reference_divergence(p, q, name, beta, skew):
    """Plain formulas on probabilities (float64). 0·log 0 = 0."""

    def kl(a, b):
        safe_log = lambda x: x.clamp_min(1e-300).log()  # keeps NaN out of the masked branch's grad
        return torch.where(a > 0, a * (safe_log(a) - safe_log(b)), torch.zeros_like(a)).sum(-1)

    if name == "forward_kl" or (name == "jsd" and beta == 0):
        return kl(p, q)
    if name == "reverse_kl" or (name == "jsd" and beta == 1):
        return kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_forward_kl":
        return kl(p, skew * p + (1 - skew) * q)
    if name == "skew_reverse_kl":
        return kl(q, skew * q + (1 - skew) * p)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise AssertionError(name)


def _assemble(kd, zs, targets, s, normalizer):
    """(kd_weight·T²·Σkd + ce_weight·Σce)/N and the components Σkd/N, Σce/N."""
    ce = torch.nn.functional.cross_entropy(zs, targets, reduction="sum")
    t2 = s.temperature**2 if s.temperature_squared else 1.0
    return (s.kd_weight * t2 * kd + s.ce_weight * ce) / normalizer, kd / normalizer, ce / normalizer


def reference_loss(hs, ws, ht, wt, targets, s, normalizer, vocab, bias_s=None, bias_t=None, cap_s=None, cap_t=None):
    """Online logit KD + CE: returns (objective, kd, ce), each divided by ``normalizer``."""
    zs = logits(hs, ws, bias_s, cap_s, vocab)
    zt = logits(ht, wt, bias_t, cap_t, vocab)
    p = torch.softmax(zt / s.temperature, -1)
    q = torch.softmax(zs / s.temperature, -1)
    kd = reference_divergence(p, q, s.divergence, s.beta, s.skew).sum()
    return _assemble(kd, zs, targets, s, normalizer)


def reference_topk(h_s, w_s, ids, lps, targets, s, tail, t_cap, normalizer, bias=None, cap=None):
    """Sparse KD over the stored top-k (+ tail bucket or renormalised) + CE: (objective, kd, ce)."""
    zs = logits(h_s, w_s, bias, cap)
    q = torch.softmax(zs / s.temperature, -1).gather(1, ids)
    p = lps.double().exp()
    present = torch.isfinite(lps)
    q = torch.where(present, q, torch.zeros_like(q))
    if tail == "bucket":
        p = torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp(min=0)], -1)
        q = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)
    else:
        q = q / q.sum(-1, keepdim=True)
    p = p ** (t_cap / s.temperature)
    p = p / p.sum(-1, keepdim=True)
    kd = reference_divergence(p, q, s.divergence, s.beta, s.skew)
    kd = torch.where(present.any(-1), kd, torch.zeros_like(kd)).sum()  # rows without a teacher: CE only
    return _assemble(kd, zs, targets, s, normalizer)


def stored_topk(h_t, w_t, k, capture_temperature, bias=None, cap=None):
    """What a capture stores: top-k ids and log-probs of log_softmax(z_t / T_c)."""
    logp = torch.log_softmax(logits(h_t, w_t, bias, cap) / capture_temperature, -1)
    values, ids = logp.topk(k, dim=-1)
    return ids, values.float()


def make_case(rows=37, hs=16, ht=24, vs=50, vt=50, seed=0, dtype=torch.float32):
    """Random student/teacher rows and heads; student tensors require grad."""
    g = torch.Generator().manual_seed(seed)
    h_s = (torch.randn(rows, hs, generator=g) * 2).to(dtype).requires_grad_(True)
    w_s = (torch.randn(vs, hs, generator=g) * 0.5).to(dtype).requires_grad_(True)
    h_t = (torch.randn(rows, ht, generator=g) * 2).to(dtype)
    w_t = (torch.randn(vt, ht, generator=g) * 0.5).to(dtype)
    targets = torch.randint(0, min(vs, vt), (rows,), generator=g)
    return h_s, w_s, h_t, w_t, targets


def reference_sorted_l1(p, q, top_k=None):
    """Σ_j |sort↓(p)_j − sort↓(q)_j| with zero-padding to the wider side (or the first k of each)."""
    p, q = p.sort(-1, descending=True).values, q.sort(-1, descending=True).values
    if top_k:
        p, q = p[:, :top_k], q[:, :top_k]
    width = max(p.shape[1], q.shape[1])
    p = torch.cat([p, p.new_zeros(p.shape[0], width - p.shape[1])], 1)
    q = torch.cat([q, q.new_zeros(q.shape[0], width - q.shape[1])], 1)
    return (p - q).abs().sum(-1)


def reference_class_sums(p, classes, width=257):
    """[n, V] probabilities → [n, width]: the sum of p over the ids of each class (a one-hot matmul)."""
    return p @ torch.nn.functional.one_hot(classes[: p.shape[1]], width).to(p.dtype)


def reference_cross_tokenizer(h_s, w_s, h_t, w_t, index, targets, s, mode, top_k, byte_classes, normalizer,
                              student_vocab=None, teacher_vocab=None, uld_weight=1.0):
    """ULD / hybrid + CE on full float64 logits: (objective, next_byte, uld, ce), each divided by N;
    the hybrid's KD part is next_byte + uld_weight · uld.

    Student row i is compared with teacher row index[i] (−1: CE only)."""
    zs = logits(h_s, w_s, vocab=student_vocab)
    zt = logits(h_t, w_t, vocab=teacher_vocab)
    aligned = index >= 0
    q = torch.softmax(zs / s.temperature, -1)[aligned]
    p = torch.softmax(zt / s.temperature, -1)[index[aligned]]
    uld = reference_sorted_l1(p, q, top_k).sum()
    if mode == "uld":
        next_byte = zs.new_zeros(())
    else:
        pb = reference_class_sums(p, byte_classes.teacher)
        qb = reference_class_sums(q, byte_classes.student)
        next_byte = reference_divergence(pb, qb, s.divergence, s.beta, s.skew).sum()
    objective, _, ce = _assemble(next_byte + uld_weight * uld, zs, targets, s, normalizer)
    return objective, next_byte / normalizer, uld / normalizer, ce
