"""Sampled store (format version 3): the capture's draws against a float64 inverse-CDF reference,
round trip through the store and the collator, resume, the metadata, older and newer versions,
``distill-data logits --samples`` and the training options a sampled store refuses."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap
from distill_plugin.offline.codec import adaptive_truncate
from distill_plugin.offline.sampled import decode_sampled, encode_sampled, fit_sampled_tables, tally, uniforms
from distill_plugin.offline.store import StoreMismatchError, TopKStore, read_meta, row_key
from distill_plugin.testing.synthetic import zipf_lm_topk
from offline_helpers import exact_topk
from test_adaptive import FIXTURES, assert_decoded, cli

S = 8
V2_KEYS = {"teacher", "tokenizer_hash", "chat_template_hash", "k", "capture_temperature", "sequence_len", "vocab_size",
           "codec", "format_version", "extra", "epsilon"}  # StoreMeta's fields in format version 2


@pytest.fixture(scope="module")
def examples(chat_jsonl, tokenizer):
    return cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)


def sampled_capture(out, teacher, tokenizer, examples, proposal_temperature=1.0, seed=0, **kw):
    meta = cap.make_meta("tiny-teacher", tokenizer, 64, 1.0, 96, teacher.config.vocab_size, samples=S,
                         proposal_temperature=proposal_temperature, seed=seed)
    return cap.capture(examples, HFBackend(teacher, chunk_positions=16), out, meta, progress=False, **kw)


def reference_draws(teacher, e, proposal_temperature, seed):
    """float64: the full log-probs (top-V), q ∝ p^(1/τ), each uniform through q's inverse CDF."""
    vocab = teacher.config.vocab_size
    ids, lps = exact_topk(teacher, e.input_ids, vocab)
    logp = np.full((len(ids), vocab), -np.inf)
    np.put_along_axis(logp, ids, lps.astype(np.float64), 1)
    logp = logp[e.mask]
    logq = logp / proposal_temperature
    logq -= np.logaddexp.reduce(logq, axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(logq), axis=1)
    u = uniforms(seed, row_key(e.input_ids), len(logp), S)
    draws = np.array([np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u)])
    return draws, np.take_along_axis(logp - logq, draws, 1)


@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0])
def test_capture_draws_as_the_float64_reference_and_reads_back_the_estimate(
        tmp_path, teacher, tokenizer, examples, proposal_temperature):
    stats = sampled_capture(tmp_path, teacher, tokenizer, examples, proposal_temperature, seed=7, batch_size=5)
    assert stats.rows == len(examples)
    recorded = json.loads((tmp_path / "meta.json").read_text())
    assert (recorded["format_version"], recorded["k"]) == (3, S)
    assert recorded["extra"]["sampled"] == {"samples": S, "proposal_temperature": proposal_temperature, "seed": 7}
    # only the keys a format-version-2 reader builds its metadata from: it refuses the store on its
    # version (one line) rather than failing on an unknown key
    assert set(recorded) <= V2_KEYS | {"checksums"}
    store = TopKStore(tmp_path)
    distinct = []
    for e in examples:
        row = store.get_by_ids(e.input_ids)
        draws, log_w = reference_draws(teacher, e, proposal_temperature, seed=7)
        ids, counts, lw = tally(draws, log_w)
        kept = counts > 0
        with np.errstate(divide="ignore"):
            ref = np.where(kept, np.log(counts / S) + (lw if proposal_temperature != 1.0 else 0), -np.inf)
        got = dict(zip(zip(np.nonzero(np.isfinite(row.logprobs))[0], row.ids[np.isfinite(row.logprobs)]),
                       row.logprobs[np.isfinite(row.logprobs)]))
        want = dict(zip(zip(np.nonzero(kept)[0], ids[kept]), ref[kept]))
        assert got.keys() == want.keys()  # the same ids at every position
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], atol=2e-3, rtol=1e-3)
        steps = np.diff(row.logprobs, axis=1)
        assert (np.isnan(steps) | (steps <= 0)).all()  # decreasing p̂, empty slots (-inf) last
        if proposal_temperature == 1.0:  # q = p: the counts alone, Σ p̂ = 1
            np.testing.assert_allclose(np.exp(row.logprobs.astype(np.float64)).sum(1), 1.0, rtol=1e-6)
        distinct.extend(kept.sum(1))
    assert 1 < np.mean(distinct) < S  # the tiny teacher is neither certain nor flat


def test_resume_draws_the_same_store_and_refuses_another_seed(tmp_path, teacher, tokenizer, examples):
    sampled_capture(tmp_path / "once", teacher, tokenizer, examples, batch_size=4)
    first = sampled_capture(tmp_path / "twice", teacher, tokenizer, examples, max_rows=5, batch_size=3, rows_per_part=2)
    second = sampled_capture(tmp_path / "twice", teacher, tokenizer, examples, batch_size=7, rows_per_part=2)
    assert first.rows == 5 and second.skipped == 5 and second.rows == len(examples) - 5
    once, twice = TopKStore(tmp_path / "once"), TopKStore(tmp_path / "twice")
    for e in examples:  # other batches, parts and order: the same draws
        a, b = once.get_by_ids(e.input_ids), twice.get_by_ids(e.input_ids)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
    with pytest.raises(StoreMismatchError, match="seed"):
        sampled_capture(tmp_path / "twice", teacher, tokenizer, examples, seed=1)
    other = sampled_capture(tmp_path / "seed1", teacher, tokenizer, examples, seed=1)
    assert other.rows == len(examples)
    e = examples[0]
    assert not np.array_equal(TopKStore(tmp_path / "seed1").get_by_ids(e.input_ids).ids, once.get_by_ids(e.input_ids).ids)


def test_codec_round_trip_and_what_it_refuses():
    ids, lps = zipf_lm_topk(64, 64, preset="typical", seed=3)
    rng = np.random.default_rng(0)
    slot = (rng.random((64, 12))[..., None] > np.cumsum(np.exp(lps.astype(np.float64)), 1)[:, None]).sum(-1)
    draws = np.take_along_axis(ids, np.minimum(slot, 63), 1)
    t_ids, counts, lw = tally(draws, rng.normal(size=draws.shape).astype(np.float32))
    for weighted in (False, True):
        tables = fit_sampled_tables([(t_ids, counts, lw)], 12)
        blob = encode_sampled(t_ids, counts, lw, tables, 12, weighted)
        d_ids, d_counts, d_lw = decode_sampled(blob, 64, 12, tables, weighted)
        np.testing.assert_array_equal(d_ids, t_ids)
        np.testing.assert_array_equal(d_counts, counts)
        expected = lw.astype(np.float16).astype(np.float32) if weighted else np.zeros_like(lw)
        np.testing.assert_array_equal(d_lw, np.where(counts > 0, expected, 0))
    with pytest.raises(ValueError, match="sum to the sample count"):
        fit_sampled_tables([(t_ids, counts * 2, lw)], 12)
    with pytest.raises(ValueError, match="at least one drawn id"):
        fit_sampled_tables([(t_ids, np.zeros_like(counts), lw)], 12)


def test_older_versions_load_and_a_newer_one_stops_with_one_line(tmp_path):
    """``fixtures/store_v2``: written by the format-version-2 code (adaptive, ε = 0.3) from the
    ``store_v1`` inputs; both still decode. A version this code does not know names itself."""
    inputs = np.load(FIXTURES / "store_v1_inputs.npz")
    for name, version in (("store_v1", 1), ("store_v2", 2)):
        meta = read_meta(FIXTURES / name)
        assert meta.format_version == version and not meta.sampled
        store = TopKStore(FIXTURES / name)
        for r, (a, b) in enumerate([(0, 9), (9, 20), (20, 30)]):
            row = store.get_by_ids(inputs[f"input_ids{r}"])
            ids, lps = inputs["ids"][a:b], inputs["logprobs"][a:b]
            if version == 2:
                ids, lps = adaptive_truncate(ids, lps, 0.3)
                ids = np.where(np.isfinite(lps), ids, -1)  # empty slots sort first by id
                row.ids[~np.isfinite(row.logprobs)] = -1
            assert_decoded(ids, lps, row.ids, row.logprobs, meta.codec_config)
    newer = tmp_path / "newer"
    newer.mkdir()
    data = json.loads((FIXTURES / "store_v2" / "meta.json").read_text()) | {"format_version": 4, "future_key": 1}
    (newer / "meta.json").write_text(json.dumps(data))
    for read in (read_meta, TopKStore):
        with pytest.raises(StoreMismatchError) as err:
            read(newer)
        message = str(err.value)
        assert "\n" not in message and str(newer) in message and "format version 4" in message
        assert "reads versions 1, 2, 3" in message


def test_cli_samples_and_the_options_it_refuses(tmp_path, teacher_dir, chat_jsonl):
    run = cli(sys.executable, "-m", "data_prep.cli", "logits", str(chat_jsonl), "--teacher", str(teacher_dir), "-o", "store",
              "--sequence-len", "96", "--samples", "6", "--proposal-temperature", "1.5", "--seed", "11", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = read_meta(tmp_path / "store")
    assert (meta.format_version, meta.samples, meta.k, meta.proposal_temperature, meta.seed) == (3, 6, 6, 1.5, 11)
    assert meta.weighted and meta.extra["teacher_vocab_size"] > 0
    for extra, message in ((["--top-k", "8"], "--samples and --top-k"), (["--epsilon", "0.1"], "--samples and --epsilon"),
                           (["--backend", "vllm"], "--samples needs --backend hf")):
        run = cli(sys.executable, "-m", "data_prep.cli", "logits", str(chat_jsonl), "--teacher", str(teacher_dir), "-o", "other",
                  "--sequence-len", "96", "--samples", "6", *extra, cwd=tmp_path)
        assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]


def test_training_options_a_sampled_store_refuses(tmp_path, teacher, tokenizer, examples):
    from distill_plugin.args import DistillConfig
    from distill_plugin.errors import SetupError
    from distill_plugin.methods.stored import check_sampled_config

    sampled_capture(tmp_path, teacher, tokenizer, examples[:2])
    meta = read_meta(tmp_path)
    store = str(tmp_path)
    check_sampled_config(DistillConfig(teacher_logits=store, ce_weight=0.5), meta)  # forward KL at T = 1: fine
    for options, message in (({"topk": 4}, "distill.topk: with a sampled store"),
                             ({"topk_tail": "renormalize"}, "distill.topk_tail: with a sampled store"),
                             ({"divergence": "reverse_kl"}, "divergence 'reverse_kl' with a sampled store is biased"),
                             ({"temperature": 2.0}, "set temperature to 1 or capture at 2")):
        with pytest.raises(SetupError, match=message) as err:
            check_sampled_config(DistillConfig(teacher_logits=store, **options), meta)
        assert "\n" not in str(err.value)
    # hidden-state KD only (kd_weight 0) beside the store: the logit options are not used
    check_sampled_config(DistillConfig(teacher_logits=store, kd_weight=0.0, ce_weight=1.0, temperature=2.0), meta)
