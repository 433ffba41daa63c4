"""Adaptive top-k (store format version 2): ragged codec round trip, kept mass, the loss on padded
targets, format-version-1 stores still loading, and ``distill-data logits --epsilon``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_plugin.offline.codec import CodecConfig, adaptive_truncate, decode, encode, fit_tables
from distill_plugin.offline.store import TopKStore, check_compatible, read_meta
from distill_plugin.testing.synthetic import reasoning_lm_topk, zipf_lm_topk

from offline_helpers import by_id, exact_topk

FIXTURES = Path(__file__).parent / "fixtures"
K = 8


def sources():
    return {"typical": zipf_lm_topk(192, 64, preset="typical", seed=5),
            "flat": zipf_lm_topk(96, 64, preset="flat", seed=6),
            "reasoning": reasoning_lm_topk(192, 64, seed=7)}


def assert_decoded(ids, lps, dids, dlps, cfg=CodecConfig()):
    """Ids exact with their pairing; log-probs within the sqrt-scale bound
    ``|sqrt(q_i/q_max) - sqrt(p_i/p_max)| <= 1 / (2 (levels - 2))`` and the float16 top-1."""
    ref_ids, ref_lps = by_id(ids, lps)
    got_ids, got_lps = by_id(dids, dlps)
    np.testing.assert_array_equal(got_ids, ref_ids)
    finite = np.isfinite(ref_lps)
    np.testing.assert_array_equal(finite, np.isfinite(got_lps))
    dtop, top = got_lps.max(1, keepdims=True), ref_lps.max(1, keepdims=True)
    assert np.abs(dtop - top).max() <= np.abs(top).max() * 2**-11 + 1e-6
    rel, rel_hat = np.maximum(dtop - ref_lps, 0), dtop - got_lps
    in_range = finite & (rel_hat < rel_hat[finite].max(initial=0))  # below the last level
    err = np.abs(np.exp(-rel_hat / 2) - np.exp(-rel / 2))[in_range]
    assert err.max(initial=0) <= 0.5 / (cfg.levels - 2) + 1e-5


def ragged_roundtrip(ids, lps, cfg=CodecConfig()):
    tables = fit_tables([(ids, lps)], cfg, ragged=True)
    blob = encode(ids, lps, tables, cfg, ragged=True)
    return blob, *decode(blob, len(ids), ids.shape[1], tables, cfg, ragged=True)


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.05, 0.5])
def test_truncation_keeps_mass_or_cap_and_round_trips(epsilon):
    cfg = CodecConfig()
    for name, (ids, lps) in sources().items():
        tids, tlps = adaptive_truncate(ids, lps, epsilon)
        count = np.isfinite(tlps).sum(1)
        assert (count >= 1).all() and (count <= 64).all()
        # the kept entries are the top count_n of the exact top-k, and they are the fewest that reach 1 - eps
        np.testing.assert_array_equal(tids[np.isfinite(tlps)], ids[np.arange(64)[None] < count[:, None]])
        mass = np.exp(tlps.astype(np.float64)).sum(1)
        assert ((mass >= 1 - epsilon) | (count == 64)).all(), name
        fewer = np.exp(np.where(np.arange(64)[None] < count[:, None] - 1, lps, -np.inf).astype(np.float64)).sum(1)
        assert (fewer < 1 - epsilon).all()
        blob, dids, dlps = ragged_roundtrip(tids, tlps, cfg)
        assert dids.shape == dlps.shape == (len(ids), 64)
        np.testing.assert_array_equal(np.isfinite(dlps).sum(1), count)
        assert (dids[~np.isfinite(dlps)] == 0).all()
        steps = np.diff(dlps, axis=1)
        assert (np.isnan(steps) | (steps <= 0)).all()  # decreasing log-prob, -inf last
        assert_decoded(np.where(np.isfinite(tlps), tids, -1), tlps,  # padding sorts first by id -1
                       np.where(np.isfinite(dlps), dids, -1), dlps, cfg)


def test_fixed_layout_is_unchanged_and_ragged_is_smaller():
    ids, lps = reasoning_lm_topk(128, 64, seed=1)
    cfg = CodecConfig()
    tables = fit_tables([(ids, lps)], cfg)
    assert "count_counts" not in json.loads(tables.to_json())
    fixed = encode(ids, lps, tables, cfg)
    _, fids, flps = ragged_roundtrip(ids, lps)  # every entry finite: the ragged layout of the full k
    dids, dlps = decode(fixed, len(ids), 64, tables, cfg)
    np.testing.assert_array_equal(by_id(fids, flps)[0], by_id(dids, dlps)[0])
    np.testing.assert_array_equal(by_id(fids, flps)[1], by_id(dids, dlps)[1])
    blob, _, _ = ragged_roundtrip(*adaptive_truncate(ids, lps, 0.05))
    assert len(blob) < 0.5 * len(fixed)


def test_format_version_1_store_loads_unchanged():
    """``fixtures/store_v1``: written by the fixed-top-k code before format version 2 (k = 8, V = 1000,
    3 rows in 2 parts); ``store_v1_inputs.npz`` holds the captured arrays."""
    meta = read_meta(FIXTURES / "store_v1")
    assert meta.format_version == 1 and meta.epsilon is None and not meta.ragged
    check_compatible(meta, chat_template=None)
    inputs = np.load(FIXTURES / "store_v1_inputs.npz")
    store = TopKStore(FIXTURES / "store_v1")
    spans = [(0, 9), (9, 20), (20, 30)]
    for r, (a, b) in enumerate(spans):
        row = store.get_by_ids(inputs[f"input_ids{r}"])
        assert row.row_id == f"r{r}" and row.ids.shape == (b - a, 8)
        assert_decoded(inputs["ids"][a:b], inputs["logprobs"][a:b], row.ids, row.logprobs, meta.codec_config)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_loss_on_padded_targets_equals_the_kept_entries(divergence, tail):
    """Per position, the divergence (and its gradient) on the decoded ``[k]`` row padded with -inf
    equals the one on its ``c_n`` kept entries alone (float64)."""
    from distill_plugin.losses.divergences import divergence as div
    from distill_plugin.losses.topk import topk_distributions

    ids, lps = reasoning_lm_topk(48, 64, vocab=4096, seed=2)
    tids, tlps = adaptive_truncate(ids, lps, 0.05)
    _, dids, dlps = ragged_roundtrip(tids, tlps)
    count = np.isfinite(dlps).sum(1)
    assert count.min() == 1 and count.max() > 1
    logits = torch.randn(len(ids), 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss_and_grad(rows, t_ids, t_lps, temper):
        z = logits[rows].clone().requires_grad_(True)
        teacher, student = topk_distributions(torch.log_softmax(z, -1), torch.from_numpy(t_ids),
                                              torch.from_numpy(t_lps).double(), tail, temper)
        value = div(teacher, student, divergence)
        value.sum().backward()
        return value.detach(), z.grad

    for temper in (1.0, 0.5):
        padded, padded_grad = loss_and_grad(slice(None), dids, dlps, temper)
        for n in range(len(ids)):
            c = count[n]
            alone, alone_grad = loss_and_grad(slice(n, n + 1), dids[n:n + 1, :c], dlps[n:n + 1, :c], temper)
            torch.testing.assert_close(padded[n:n + 1], alone, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(padded_grad[n:n + 1], alone_grad, rtol=1e-12, atol=1e-15)


def cli(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_cli_epsilon_captures_an_adaptive_store(tmp_path, teacher_dir, teacher, tokenizer, chat_jsonl):
    """``distill-data logits --epsilon`` on the tiny pair: format version 2, each position the top entries
    reaching 1 - epsilon (or K), read back by the collator padded to K with -inf."""
    from distill_plugin.offline import capture as cap
    from distill_plugin.offline.collator import OfflineTopKCollator
    from distill_plugin.signals import TOPK_IDS, TOPK_LOGPROBS

    epsilon = 0.5  # the briefly trained tiny teacher is not peaked enough for 0.05 at K = 8
    run = cli(sys.executable, "-m", "data_prep.cli", "logits", str(chat_jsonl), "--teacher", str(teacher_dir),
              "-o", "store", "--top-k", str(K), "--sequence-len", "96", "--epsilon", str(epsilon), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = read_meta(tmp_path / "store")
    assert (meta.format_version, meta.epsilon, meta.k) == (2, epsilon, K)
    assert json.loads((tmp_path / "store" / "meta.json").read_text())["epsilon"] == epsilon
    store = TopKStore(tmp_path / "store")
    examples = cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)
    counts = []
    for e in examples:
        row = store.get_by_ids(e.input_ids)
        ids, lps = exact_topk(teacher, e.input_ids, K)
        ids, lps = ids[e.mask], lps[e.mask]
        count = np.isfinite(row.logprobs).sum(1)
        counts.extend(count)
        mass = np.exp(lps.astype(np.float64)).cumsum(1)
        expected = np.minimum(1 + (mass < 1 - epsilon).sum(1), K)
        np.testing.assert_array_equal(count, expected)
        keep = np.arange(K)[None] < count[:, None]
        ref = by_id(np.where(keep, ids, -1), np.where(keep, lps, -np.inf))
        got = by_id(np.where(keep, row.ids, -1), row.logprobs)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_allclose(got[1][keep], ref[1][keep], atol=0.05)
    assert min(counts) < K  # some positions keep fewer than K
    e = examples[0]
    feats = [dict(input_ids=list(e.input_ids), labels=list(e.labels), attention_mask=[1] * len(e.input_ids))]
    batch = OfflineTopKCollator(tokenizer, store_path=str(tmp_path / "store"), padding=True, return_tensors="pt")(feats)
    assert batch[TOPK_IDS].shape[-1] == K and batch[TOPK_LOGPROBS].dtype == torch.float32
    row = store.get_by_ids(e.input_ids)
    np.testing.assert_array_equal(batch[TOPK_LOGPROBS][0, :len(e.input_ids)][torch.from_numpy(e.mask)].numpy(),
                                  row.logprobs)


def test_ragged_refuses_what_it_cannot_store():
    ids, lps = zipf_lm_topk(4, 8, vocab=1000, seed=0)
    cfg = CodecConfig()
    for bad_lps in (np.where(np.arange(8) == 3, np.nan, lps), np.full_like(lps, -np.inf)):
        with pytest.raises(ValueError):
            fit_tables([(ids, bad_lps.astype(np.float32))], cfg, ragged=True)
    dup = ids.copy()
    dup[:, 1] = dup[:, 0]
    with pytest.raises(ValueError, match="distinct"):
        fit_tables([(dup, lps)], cfg, ragged=True)
    with pytest.raises(ValueError, match="epsilon"):
        adaptive_truncate(ids, lps, 1.0)
