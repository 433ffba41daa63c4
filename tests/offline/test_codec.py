"""Codec round trips on realistic distributions: ids exact, log-prob error and KL within bounds."""

from __future__ import annotations

import numpy as np
import pytest

from distill_plugin.offline.codec import CodecConfig, decode, encode, fit_tables, topk_kl
from distill_plugin.testing.synthetic import zipf_lm_topk

from offline_helpers import by_id, exact_topk


def roundtrip(ids, lps, cfg=CodecConfig()):
    tables = fit_tables([(ids, lps)], cfg)
    blob = encode(ids, lps, tables, cfg)
    dids, dlps = decode(blob, len(ids), ids.shape[1], tables, cfg)
    return blob, dids, dlps


def check_bounds(ids, lps, dids, dlps, cfg):
    ids_s, lps_s = by_id(ids, lps)
    dids_s, dlps_s = by_id(dids, dlps)
    np.testing.assert_array_equal(ids_s, dids_s)  # ids exact, pairing kept
    steps = np.diff(dlps, axis=1)
    assert (np.isnan(steps) | (steps <= 0)).all()  # decreasing log-prob order (-inf - -inf is nan)
    finite = np.isfinite(lps_s)
    np.testing.assert_array_equal(finite, np.isfinite(dlps_s))
    dtop = dlps_s.max(1, keepdims=True)  # the float16 top-1, the encoder's reference
    rel = np.maximum(dtop - lps_s, 0)
    rel_hat = dtop - dlps_s
    if cfg.scale == "log":
        in_range = finite & (rel <= cfg.r_max)
        assert np.abs(rel_hat - rel)[in_range].max(initial=0) <= cfg.step / 2 + 1e-4
    else:
        in_range = finite & (rel_hat < rel_hat[finite].max(initial=0))  # below the last level
        err = np.abs(np.exp(-rel_hat / 2) - np.exp(-rel / 2))[in_range]
        assert err.max(initial=0) <= 0.5 / (cfg.levels - 2) + 1e-5
    assert np.abs(dtop - lps_s.max(1, keepdims=True)).max() <= np.abs(lps_s.max(1)).max() * 2**-11 + 1e-6
    kl = topk_kl(lps_s, dlps_s)
    if cfg.scale == "log":
        assert kl.max() <= cfg.kl_bound + 1e-9
    return kl


@pytest.mark.parametrize("scale", ["sqrt", "log"])
def test_large_vocab_lm_like_meets_target(scale):
    ids, lps = zipf_lm_topk(192, 64, preset="typical", seed=3)
    cfg = CodecConfig(scale=scale)
    blob, dids, dlps = roundtrip(ids, lps, cfg)
    kl = check_bounds(ids, lps, dids, dlps, cfg)
    assert kl.mean() <= 1e-3
    assert len(blob) / len(ids) < 0.4 * 384  # far below raw fp16 + int32
    if scale == "sqrt":
        assert len(blob) / len(ids) <= 120  # bytes/token target at k = 64, V = 151,936


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_tiny_teacher_outputs(teacher, tokenizer, temperature):
    from distill_plugin.testing.synthetic import TEXT

    ids, lps = exact_topk(teacher, tokenizer(TEXT)["input_ids"], 64, temperature)
    cfg = CodecConfig(bits=7, scale="log")
    _, dids, dlps = roundtrip(ids, lps, cfg)
    check_bounds(ids, lps, dids, dlps, cfg)


def test_ties_odd_k_and_extremes():
    rng = np.random.default_rng(0)
    k, n, vocab = 37, 20, 151_936
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)])
    ids[0, :2] = [0, vocab - 1]  # smallest and largest id
    lps = np.full((n, k), -3.0, dtype=np.float32)  # all tied
    lps[1] = np.linspace(-0.01, -1e4, k)  # very small log-probs: clamped at r_max
    lps[2, 5:] = -np.inf  # padded candidates
    lps[3, 0] = 0.0  # a certain token
    for cfg in (CodecConfig(), CodecConfig(scale="log")):
        _, dids, dlps = roundtrip(ids, lps, cfg)
        check_bounds(ids, lps, dids, dlps, cfg)
        assert np.isfinite(dlps[2]).sum() == 5
        assert (dlps[1, 1:] < dlps[1, 0] - 10).all()  # far tail stays finite and negligible


def test_rejects_duplicates_and_nan():
    cfg = CodecConfig()
    tables = fit_tables([], cfg)
    with pytest.raises(ValueError, match="distinct"):
        encode(np.array([[3, 3]]), np.array([[-1.0, -2.0]]), tables, cfg)
    with pytest.raises(ValueError, match="finite"):
        encode(np.array([[3, 4]]), np.array([[np.nan, -2.0]]), tables, cfg)


def test_more_bits_less_error():
    ids, lps = zipf_lm_topk(64, 32, preset="flat", seed=1)
    kls = [topk_kl(*[by_id(*x)[1] for x in ((ids, lps), roundtrip(ids, lps, CodecConfig(bits=b))[1:])]).mean()
           for b in (6, 8, 10)]
    assert kls[0] > kls[1] > kls[2]
