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

    python benchmarks/bench_topk_codec.py [--positions 512]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from distill_plugin.offline.codec import CodecConfig, adaptive_truncate, decode, encode, fit_tables, topk_kl
from distill_plugin.testing.synthetic import TEXT, reasoning_lm_topk, train_tiny_teacher, zipf_lm_topk

CONFIGS = [("sqrt", 6), ("sqrt", 7), ("sqrt", 8), ("log", 8), ("log", 9)]


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


def measure_target(ids, lps, vocab, epsilon=None, cap=64, cfg=CodecConfig()):
    """Bytes/token, mean kept entries, quantisation KL and target KL of top-``cap`` (``epsilon`` None)
    or adaptive top-k."""
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
    return (len(blob) / len(ids), np.isfinite(dlps).sum(1).mean(), qkl.mean(),
            target_kl(ids, lps, dids, dlps, vocab).mean())


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
    print("\n| source | store | B/tok | mean entries | quantisation KL | target KL(P \u2016 Q) |")
    print("|---|---|---|---|---|---|")
    for name, (ids, lps) in sources.items():
        vocab = int(name.split("V=")[1].rstrip(")"))
        for label, eps in (("top-64", None), *((f"adaptive \u03b5={e:g}", e) for e in (0.001, 0.01, 0.05))):
            size, entries, qkl, tkl = measure_target(ids, lps, vocab, eps)
            print(f"| {name} | {label} | {size:.1f} | {entries:.1f} | {qkl:.1e} | {tkl:.2e} |")


if __name__ == "__main__":
    main()
