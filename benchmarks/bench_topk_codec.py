"""Bytes/token and decoded KL of the top-k codec (``distill_plugin.offline.codec``).

KL is KL(exact || decoded) in nats/token between the exact top-k log-probs and the decoded ones,
both renormalised over the k candidates (the distribution the ``renormalize`` tail mode trains on).
Sources: ``tiny`` = the tiny teacher trained briefly on text (real LM outputs, V = 362);
``zipf-typical`` / ``zipf-flat`` = LM-shaped distributions at V = 151,936 (see
``distill_plugin.testing.synthetic``; a model of an LM, not one). Raw = fp16 log-prob + int32 id.

    python benchmarks/bench_topk_codec.py [--positions 512]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from distill_plugin.offline.codec import CodecConfig, decode, encode, fit_tables, topk_kl
from distill_plugin.testing.synthetic import TEXT, train_tiny_teacher, zipf_lm_topk

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=512)
    args = ap.parse_args()
    sources = {"tiny (V=362)": tiny_source(args.positions, 128)}
    for preset in ("typical", "flat"):
        sources[f"zipf-{preset} (V=151936)"] = zipf_lm_topk(args.positions, 128, preset=preset, seed=0)
    print("| source | k | raw B/tok | " + " | ".join(f"{s}{b} B/tok, KL" for s, b in CONFIGS) + " |")
    print("|---|---|---|" + "---|" * len(CONFIGS))
    for name, (ids, lps) in sources.items():
        for k in (16, 32, 64, 128):
            if k > ids.shape[1]:
                continue
            cells = [measure(ids[:, :k], lps[:, :k], CodecConfig(bits=b, scale=s)) for s, b in CONFIGS]
            print(f"| {name} | {k} | {6 * k} | " + " | ".join(f"{n:.1f}, {kl:.1e}" for n, kl in cells) + " |")


if __name__ == "__main__":
    main()
