"""Sources of realistic top-k distributions for the codec benchmark and tests (no hub teacher here).

* ``train_tiny_teacher``: the tiny Qwen2 teacher of ``distill_plugin.testing.tiny`` trained for a few
  seconds on English text, so its outputs are a real LM's (peaked, structured), at a small V.
* ``zipf_lm_topk``: large-V (151,936) distributions *shaped like* an LM's: logits
  ``= log f(v) + sigma * z_v + boosts`` where ``f`` is a Zipf(1) unigram frequency in id order
  (BPE ids roughly follow merge, hence frequency, order), ``z`` is Gaussian context noise and
  ``n_boost`` random tokens get a uniform ``[0, boost)`` context boost. The presets are calibrated
  on their entropy and top-1 probability (``typical``: H ~ 1 nat, top-1 ~ 0.74, top-64 mass ~ 0.98;
  ``flat``: H ~ 4 nats, top-1 ~ 0.47). They are a model of an LM, not one: the id statistics
  (how concentrated top-k sets are on frequent tokens) drive the id cost and are an assumption.
* ``reasoning_lm_topk``: reasoning-shaped distributions at the same V: a fraction ``fork_rate`` of
  positions are ``zipf_lm_topk`` "typical" rows (forks with spread mass); on the others the top-1
  token is set to probability ``u ~ Uniform(0.99, 0.9999)`` and the rest of the vocabulary is scaled
  by ``(1 - u) / (1 - p_1)``, so the teacher is near-certain (top probability > 0.99).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PRESETS = {"typical": dict(sigma=2.2, n_boost=16, boost=20.0), "flat": dict(sigma=2.0, n_boost=8, boost=16.0)}

TEXT = (
    "The quick brown fox jumps over the lazy dog. A teacher model predicts the next token of a text; "
    "a student learns from the teacher's whole distribution instead of a single label. Knowledge "
    "distillation trains small models that keep much of a large model's quality. We store the top "
    "log-probabilities of each position, compress them, and read them back while training. "
)


def zipf_lm_topk(n_positions: int, k: int, vocab: int = 151_936, preset: str = "typical", seed: int = 0,
                 chunk: int = 128, certain: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` int64 / ``logprobs`` float32 ``[n_positions, k]``: exact top-k of a full-V log_softmax.

    ``certain``: the fraction of positions made near-certain (``reasoning_lm_topk``)."""
    import torch

    p = PRESETS[preset]
    gen = torch.Generator().manual_seed(seed)
    prior = -torch.log(torch.arange(vocab, dtype=torch.float32) + 10)
    ids, lps = [], []
    for start in range(0, n_positions, chunk):
        n = min(chunk, n_positions - start)
        logits = prior + p["sigma"] * torch.randn(n, vocab, generator=gen)
        spikes = torch.randint(0, vocab, (n, p["n_boost"]), generator=gen)
        logits.scatter_add_(1, spikes, p["boost"] * torch.rand(n, p["n_boost"], generator=gen))
        lp = torch.log_softmax(logits.double() if certain else logits, -1)
        if certain:
            sure = torch.rand(n, generator=gen) < certain
            u = 0.99 + 0.0099 * torch.rand(n, generator=gen, dtype=torch.float64)
            top_lp, top = lp.max(-1)
            shift = torch.log1p(-u) - torch.log(-torch.expm1(top_lp))  # log((1 - u) / (1 - p_1))
            sure_lp = (lp + shift[:, None]).scatter(1, top[:, None], torch.log(u)[:, None])
            lp = torch.where(sure[:, None], sure_lp, lp)
        v, i = lp.float().topk(k, dim=-1)
        ids.append(i.numpy())
        lps.append(v.numpy())
    return np.concatenate(ids), np.concatenate(lps)


def reasoning_lm_topk(n_positions: int, k: int, vocab: int = 151_936, fork_rate: float = 0.1,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[n_positions, k]`` top-k of reasoning-shaped distributions (module docstring)."""
    return zipf_lm_topk(n_positions, k, vocab, "typical", seed, certain=1.0 - fork_rate)


def train_tiny_teacher(out_dir: str | Path, steps: int = 150, hidden_size: int = 64, seq: int = 64,
                       seed: int = 0, text: str = TEXT) -> Path:
    """Train the tiny teacher on ``text`` (next-token CE, AdamW) and save it with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from distill_plugin.testing import tiny

    out_dir = Path(out_dir)
    tiny.build_tokenizer(out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))  # as every consumer will load it
    model = tiny.build_model(None, tok, hidden_size=hidden_size, seed=seed)
    data = torch.tensor(tok(text * 4)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (8,), generator=gen)
        batch = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir
