"""Bytes/token and decoded KL of the top-k codec (``distill_plugin.offline.codec``).

KL is KL(exact || decoded) in nats/token between the exact top-k log-probs and the decoded ones,
both renormalised over the k candidates (the distribution the ``renormalize`` tail mode trains on).
Sources: ``tiny`` = the tiny teacher trained briefly on text (real LM outputs, V = 362);
``zipf-typical`` / ``zipf-flat`` = LM-shaped distributions at V = 151,936 (see
``distill_plugin.testing.synthetic``; a model of an LM, not one); ``reasoning`` = the same V with
90% of positions near-certain (top-1 probability in (0.99, 0.9999)) and 10% "typical" forks.
Raw = fp16 log-prob + int32 id.

The second table compares fixed top-64 with adaptive top-k (``codec.adaptive_truncate``, cap 64,
the ragged layout) at the default codec (sqrt, 8 bits): bytes/token, the mean kept entries, the
quantisation KL as above (over each position's kept entries), and the KL of the whole training
target, ``KL(P || Q)`` over the vocabulary: ``P`` the exact distribution, ``Q`` the decoded kept
entries with the tail bucket ``1 - sum_kept q`` spread evenly over the ``V - c`` other ids (the
same bucket for top-64, ``c = 64``). The sources hold the exact top-128; the mass beyond it is
taken as spread evenly over its ``V - 128`` ids in ``P`` (identical for every row of a source).

The same table has the sampled stores (``offline.sampled``: ``S`` draws per position from
``q ∝ P^(1/τ)`` over the whole vocabulary, a draw beyond the top-128 a uniformly chosen id of the
rest; stored as ids, counts and, for τ ≠ 1, float16 log weights). Their target column is the KL of
the *expected* estimate, ``KL(P || E[p̂])`` with ``E[p̂_i] = q_i ŵ_i`` (ŵ the stored float16 weight;
generalised KL, ``E[p̂]`` need not sum to 1): 0 when ``q = P``, the float16 rounding otherwise. A
single draw's ``KL(P || p̂)`` is infinite (every id not drawn has ``p̂ = 0``), so the per-draw
columns, for every row, are the total variation ``½ Σ |P − Q|`` and the reverse ``KL(Q || P)``,
``Q`` the training target (top-k and adaptive: as above; sampled: one draw's ``p̂``), means over
the positions.

    python benchmarks/bench_topk_codec.py [--positions 512]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from distill_plugin.offline.codec import CodecConfig, adaptive_truncate, decode, encode, fit_tables, topk_kl
from distill_plugin.offline.sampled import decode_sampled, encode_sampled, fit_sampled_tables, tally
from distill_plugin.testing.synthetic import TEXT, reasoning_lm_topk, train_tiny_teacher, zipf_lm_topk

CONFIGS = [("sqrt", 6), ("sqrt", 7), ("sqrt", 8), ("log", 8), ("log", 9)]
SAMPLED = [(6, 1.0), (12, 1.0), (32, 1.0), (12, 1.5)]  # (draws per position, proposal temperature τ)


def tiny_source(positions: int, kmax: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        train_tiny_teacher(d, steps=100)
        model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
        ids = torch.tensor([tok(TEXT * 3)["input_ids"][:positions]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)
    v, i = lp.topk(kmax, -1)
    return i.numpy(), v.numpy()


def measure(ids, lps, cfg):
    tables = fit_tables([(ids, lps)], cfg)
    blob = encode(ids, lps, tables, cfg)
    dids, dlps = decode(blob, len(ids), ids.shape[1], tables, cfg)
    o, od = np.argsort(ids, 1), np.argsort(dids, 1)
    assert np.array_equal(np.take_along_axis(ids, o, 1), np.take_along_axis(dids, od, 1))
    kl = topk_kl(np.take_along_axis(lps, o, 1), np.take_along_axis(dlps, od, 1))
    return len(blob) / len(ids), kl.mean()


def target_kl(ids, lps, dids, dlps, vocab):
    """Per-position ``KL(P || Q)`` over the vocabulary (module docstring); ``ids``/``lps`` the exact
    top-128, ``dids``/``dlps`` the decoded target (``-inf`` slots dropped)."""
    p = np.exp(lps.astype(np.float64))
    n, m = ids.shape
    q = np.zeros_like(p)
    kept = np.isfinite(dlps)
    c = kept.sum(1)
    q_tail = np.maximum(1 - np.where(kept, np.exp(dlps.astype(np.float64)), 0).sum(1), 1e-30)
    q[:] = (q_tail / (vocab - c))[:, None]
    pos = {(r, t): j for r in range(n) for j, t in enumerate(ids[r])}
    for r, j in zip(*np.nonzero(kept)):
        q[r, pos[(r, int(dids[r, j]))]] = np.exp(np.float64(dlps[r, j]))
    rest = np.maximum(1 - p.sum(1), 0)  # beyond the exact top-128, spread over vocab - m ids in P
    body = (p * (np.log(p) - np.log(q))).sum(1)
    tail = np.where(rest > 0, rest * (np.log(np.maximum(rest, 1e-300) / (vocab - m)) - np.log(q_tail / (vocab - c))), 0)
    return body + tail


def per_draw(p, rest, vocab, q, q_rest_each, extra_q=()):
    """Per-position TV ``½Σ|P − Q|`` and ``KL(Q‖P)`` over the vocabulary: ``p``/``q`` ``[n, 128]`` on the
    exact top-128 ids; the other ``vocab − 128`` ids have ``P = rest / (vocab − 128)`` each and ``Q =
    q_rest_each`` except the ``extra_q`` (a list per position of Q values of drawn ids beyond the top-128)."""
    m = vocab - p.shape[1]
    p_o = rest / m
    xlogy = lambda a, b: np.where(a > 0, a * (np.log(np.maximum(a, 1e-300)) - np.log(np.maximum(b, 1e-300))), 0.0)
    tv, rkl = np.abs(p - q).sum(1), xlogy(q, p).sum(1)
    n_extra = np.array([len(e) for e in extra_q] or [0] * len(p))
    tv = tv + (m - n_extra) * np.abs(q_rest_each - p_o)
    rkl = rkl + (m - n_extra) * xlogy(q_rest_each, p_o)
    for r, extra in enumerate(extra_q):
        e = np.asarray(extra, np.float64)
        tv[r] += np.abs(e - p_o[r]).sum()
        rkl[r] += xlogy(e, p_o[r]).sum()
    return 0.5 * tv, rkl


def measure_sampled(ids, lps, vocab, samples, tau=1.0, seed=0):
    """Bytes/token, mean distinct ids, KL(P‖E[p̂]) and the per-draw TV and KL(p̂‖P) of a sampled store."""
    rng = np.random.default_rng(seed)
    n, m = ids.shape
    p = np.exp(lps.astype(np.float64))
    rest = np.maximum(1 - p.sum(1), 0)
    p_o = rest / (vocab - m)
    with np.errstate(divide="ignore"):
        logp = np.concatenate([np.log(p), np.log(p_o)[:, None]], 1)  # the last column: one rest id
    logq = logp / tau
    z = np.logaddexp(np.logaddexp.reduce(logq[:, :m], axis=1), np.log(vocab - m) + logq[:, m])
    logq -= z[:, None]
    bucket = np.exp(logq) * np.r_[np.ones(m), vocab - m][None]  # q of each top id, and of the whole rest
    u = rng.random((n, samples))
    slot = np.minimum((u[..., None] > np.cumsum(bucket, 1)[:, None]).sum(-1), m)
    draws = np.where(slot < m, np.take_along_axis(ids, np.minimum(slot, m - 1), 1), -1)
    for r, j in zip(*np.nonzero(slot == m)):  # a uniformly chosen id outside the top-128
        x = rng.integers(vocab - m)
        for excluded in np.sort(ids[r]):
            x += excluded <= x
        draws[r, j] = x
    log_w = np.take_along_axis(logp - logq, slot, 1).astype(np.float32)
    t_ids, counts, lw = tally(draws, log_w if tau != 1.0 else None)
    tables = fit_sampled_tables([(t_ids, counts, lw)], samples)
    blob = encode_sampled(t_ids, counts, lw, tables, samples, tau != 1.0)
    d_ids, d_counts, d_lw = decode_sampled(blob, n, samples, tables, tau != 1.0)
    assert np.array_equal(d_ids, t_ids) and np.array_equal(d_counts, counts)
    w_hat = np.exp(np.where(d_counts > 0, d_lw, 0).astype(np.float64))
    p_hat = d_counts / samples * w_hat
    # E[p̂_i] = q_i ŵ_i: ŵ as stored (float16) for every id the draws can reach (one value per id)
    w_top = np.exp((logp - logq)[:, :m].astype(np.float32).astype(np.float16).astype(np.float64)) if tau != 1.0 \
        else np.ones((n, m))
    w_rest = np.exp((logp - logq)[:, m].astype(np.float32).astype(np.float16).astype(np.float64)) if tau != 1.0 \
        else np.ones(n)
    q = np.exp(logq)
    mean_top, mean_rest = q[:, :m] * w_top, np.where(q[:, m] > 0, q[:, m] * w_rest, 0.0)
    gen_kl = lambda a, b: np.where(a > 0, a * np.log(np.maximum(a, 1e-300) / np.maximum(b, 1e-300)), 0.0) - a + b
    expected_kl = gen_kl(p, mean_top).sum(1) + (vocab - m) * gen_kl(p_o, mean_rest)
    pos = [{int(t): j for j, t in enumerate(ids[r])} for r in range(n)]
    q_top, extra = np.zeros((n, m)), [[] for _ in range(n)]
    for r, j in zip(*np.nonzero(d_counts > 0)):
        col = pos[r].get(int(d_ids[r, j]))
        if col is None:
            extra[r].append(p_hat[r, j])
        else:
            q_top[r, col] = p_hat[r, j]
    tv, rkl = per_draw(p, rest, vocab, q_top, 0.0, extra)
    return len(blob) / n, (d_counts > 0).sum(1).mean(), expected_kl.mean(), tv.mean(), rkl.mean()


def measure_target(ids, lps, vocab, epsilon=None, cap=64, cfg=CodecConfig()):
    """Bytes/token, mean kept entries, quantisation KL, target KL and the per-draw TV and KL(Q‖P) of
    top-``cap`` (``epsilon`` None) or adaptive top-k."""
    kids, klps = ids[:, :cap], lps[:, :cap]
    ragged = epsilon is not None
    if ragged:
        kids, klps = adaptive_truncate(kids, klps, epsilon)
    tables = fit_tables([(kids, klps)], cfg, ragged)
    blob = encode(kids, klps, tables, cfg, ragged)
    dids, dlps = decode(blob, len(kids), cap, tables, cfg, ragged)
    order = lambda a, v: np.argsort(np.where(np.isfinite(v), a, -1), 1)  # -inf slots first, then by id
    o, od = order(kids, klps), order(dids, dlps)
    assert np.array_equal(np.take_along_axis(np.where(np.isfinite(klps), kids, -1), o, 1),
                          np.take_along_axis(np.where(np.isfinite(dlps), dids, -1), od, 1))
    qkl = topk_kl(np.take_along_axis(klps, o, 1), np.take_along_axis(dlps, od, 1))
    p = np.exp(lps.astype(np.float64))
    kept = np.isfinite(dlps)
    tail_each = np.maximum(1 - np.where(kept, np.exp(dlps.astype(np.float64)), 0).sum(1), 0) / (vocab - kept.sum(1))
    q = np.repeat(tail_each[:, None], ids.shape[1], 1)
    for r, j in zip(*np.nonzero(kept)):
        q[r, np.flatnonzero(ids[r] == dids[r, j])[0]] = np.exp(np.float64(dlps[r, j]))
    tv, rkl = per_draw(p, np.maximum(1 - p.sum(1), 0), vocab, q, tail_each)
    return (len(blob) / len(ids), kept.sum(1).mean(), qkl.mean(), target_kl(ids, lps, dids, dlps, vocab).mean(),
            tv.mean(), rkl.mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=512)
    args = ap.parse_args()
    sources = {"tiny (V=362)": tiny_source(args.positions, 128)}
    for preset in ("typical", "flat"):
        sources[f"zipf-{preset} (V=151936)"] = zipf_lm_topk(args.positions, 128, preset=preset, seed=0)
    sources["reasoning (V=151936)"] = reasoning_lm_topk(args.positions, 128, seed=0)
    print("| source | k | raw B/tok | " + " | ".join(f"{s}{b} B/tok, KL" for s, b in CONFIGS) + " |")
    print("|---|---|---|" + "---|" * len(CONFIGS))
    for name, (ids, lps) in sources.items():
        for k in (16, 32, 64, 128):
            if k > ids.shape[1]:
                continue
            cells = [measure(ids[:, :k], lps[:, :k], CodecConfig(bits=b, scale=s)) for s, b in CONFIGS]
            print(f"| {name} | {k} | {6 * k} | " + " | ".join(f"{n:.1f}, {kl:.1e}" for n, kl in cells) + " |")
    print("\n| source | store | B/tok | mean entries | quantisation KL | target KL(P \u2016 Q); sampled: "
          "KL(P \u2016 E[p\u0302]) | per-draw TV | per-draw KL(Q \u2016 P) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (ids, lps) in sources.items():
        vocab = int(name.split("V=")[1].rstrip(")"))
        for label, eps in (("top-64", None), *((f"adaptive \u03b5={e:g}", e) for e in (0.001, 0.01, 0.05))):
            size, entries, qkl, tkl, tv, rkl = measure_target(ids, lps, vocab, eps)
            print(f"| {name} | {label} | {size:.1f} | {entries:.1f} | {qkl:.1e} | {tkl:.2e} | {tv:.3f} | {rkl:.3f} |")
        for samples, tau in SAMPLED:
            size, entries, ekl, tv, rkl = measure_sampled(ids, lps, vocab, samples, tau)
            print(f"| {name} | sampled S={samples}" + (f" \u03c4={tau:g}" if tau != 1 else "")
                  + f" | {size:.1f} | {entries:.1f} | – | {ekl:.1e} | {tv:.3f} | {rkl:.3f} |")


if __name__ == "__main__":
    main()
