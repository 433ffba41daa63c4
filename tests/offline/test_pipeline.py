"""Capture -> store -> collator on the tiny teacher, metadata checks, resume, packing, interop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_plugin.generation.hf import HFBackend
from distill_plugin.offline import capture as cap
from distill_plugin.offline.collator import OfflineTopKCollator, offline_collator_cls_and_kwargs
from distill_plugin.offline.store import (
    StoreMismatchError, TopKStore, check_compatible, read_meta, row_key, stored_keys,
)
from distill_plugin.shards import shard_of
from distill_plugin.signals import TOPK_IDS, TOPK_LOGPROBS
from offline_helpers import by_id, exact_topk

K = 8


@pytest.fixture(scope="module")
def examples(chat_jsonl, tokenizer):
    return cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)


def run_capture(out, teacher, tokenizer, examples, temperature=1.0, **kw):
    meta = cap.make_meta("tiny-teacher", tokenizer, K, temperature, 96, teacher.config.vocab_size)
    return cap.capture(examples, HFBackend(teacher, chunk_positions=16), out, meta,
                       progress=False, **kw)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_capture_equals_exact_topk(tmp_path, teacher, tokenizer, examples, temperature):
    stats = run_capture(tmp_path, teacher, tokenizer, examples, temperature, batch_size=5)
    assert stats.rows == len(examples) and stats.tokens_per_s > 0
    store = TopKStore(tmp_path)
    assert store.meta.capture_temperature == temperature
    for e in examples:
        row = store.get_by_ids(e.input_ids)
        ids, lps = exact_topk(teacher, e.input_ids, K, temperature)
        assert row.row_id == e.row_id and np.array_equal(row.mask, e.mask)
        ref_ids, ref_lps = by_id(ids[e.mask], lps[e.mask])
        got_ids, got_lps = by_id(row.ids, row.logprobs)
        np.testing.assert_array_equal(got_ids, ref_ids)
        np.testing.assert_allclose(got_lps, ref_lps, atol=0.05)  # sqrt-scale quantisation near the top


def test_resume_and_shards_store_every_row_once(tmp_path, teacher, tokenizer, examples):
    first = run_capture(tmp_path, teacher, tokenizer, examples, max_rows=3, rows_per_part=2)
    (tmp_path / "part-s000of001-000099.tmp").write_bytes(b"torn part of a crashed run")
    second = run_capture(tmp_path, teacher, tokenizer, examples, rows_per_part=2)
    assert first.rows == 3 and second.skipped == 3 and second.rows == len(examples) - 3
    import pyarrow.parquet as pq

    keys = [k for p in sorted(tmp_path.glob("*.parquet")) for k in pq.read_table(p).column("row_key").to_pylist()]
    assert sorted(keys) == sorted({row_key(e.input_ids) for e in examples})
    sharded = [run_capture(tmp_path / "sh", teacher, tokenizer, examples, shard=i, num_shards=2) for i in (0, 1)]
    assert sum(s.rows for s in sharded) == len(examples)
    assert stored_keys(tmp_path / "sh") == set(keys)
    for i in (0, 1):  # the one shard rule of distill_plugin.shards, on the row's content key
        part_keys = {k for p in (tmp_path / "sh").glob(f"part-s{i:03d}of002-*.parquet")
                     for k in pq.read_table(p).column("row_key").to_pylist()}
        assert part_keys and part_keys == {k for k in keys if shard_of(k, 2) == i}


def test_metadata_roundtrip_and_mismatch(tmp_path, teacher, tokenizer, examples):
    from distill_plugin.testing import tiny

    run_capture(tmp_path, teacher, tokenizer, examples[:2])
    meta = read_meta(tmp_path)
    assert meta == read_meta(next(tmp_path.glob("*.parquet")))
    assert (meta.k, meta.sequence_len, meta.vocab_size, meta.format_version) == (K, 96, teacher.config.vocab_size, 1)
    check_compatible(meta, tokenizer, k=K)
    check_compatible(meta, tokenizer, k=K // 2)  # top-k' of a top-k capture is exact
    with pytest.raises(StoreMismatchError, match="k: store has top-8"):
        check_compatible(meta, tokenizer, k=K + 1)
    with pytest.raises(StoreMismatchError, match="chat template hash"):
        check_compatible(meta, tokenizer, chat_template=tiny.STRIPPING_CHAT_TEMPLATE)
    other = tiny.build_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(StoreMismatchError, match="tokenizer hash"):
        check_compatible(meta, other)
    with pytest.raises(StoreMismatchError, match="capture_temperature"):
        run_capture(tmp_path, teacher, tokenizer, examples, temperature=3.0)


def test_collator_alignment_padding_and_packing(tmp_path, teacher, tokenizer, examples):
    from axolotl.utils.collators.batching import V2BatchSamplerDataCollatorForSeq2Seq

    run_capture(tmp_path, teacher, tokenizer, examples)
    feats = lambda: [dict(input_ids=list(e.input_ids), labels=list(e.labels), attention_mask=[1] * len(e.input_ids))
                     for e in examples[:2]]
    collator = OfflineTopKCollator(tokenizer, store_path=str(tmp_path), padding=True, pad_to_multiple_of=16,
                                   return_tensors="pt")
    batch = collator(feats())
    B, T = batch["input_ids"].shape
    assert batch[TOPK_IDS].shape == (B, T, K) and batch[TOPK_IDS].dtype == torch.long
    assert batch[TOPK_LOGPROBS].dtype == torch.float32 and T % 16 == 0
    for b, e in enumerate(examples[:2]):
        ids, lps = exact_topk(teacher, e.input_ids, K)
        labels = batch["labels"][b]
        for t in range(T):
            supervised = t + 1 < T and labels[t + 1] != -100
            assert torch.isfinite(batch[TOPK_LOGPROBS][b, t, 0]) == supervised
            if supervised:  # shift: target at t is the teacher's distribution at t, predicting t+1
                got = by_id(batch[TOPK_IDS][b, t][None].numpy(), batch[TOPK_LOGPROBS][b, t][None].numpy())
                ref = by_id(ids[t][None], lps[t][None])
                np.testing.assert_array_equal(got[0], ref[0])
                np.testing.assert_allclose(got[1], ref[1], atol=0.05)
            else:
                assert (batch[TOPK_IDS][b, t] == 0).all()
    packed = OfflineTopKCollator(tokenizer, store_path=str(tmp_path), base_collator=V2BatchSamplerDataCollatorForSeq2Seq,
                                 padding=True, return_tensors="pt")(feats())
    n0, n1 = (len(e.input_ids) for e in examples[:2])
    assert packed["input_ids"].shape[0] == 1 and packed[TOPK_IDS].shape[1] == packed["input_ids"].shape[1]
    for b, off, n in ((0, 0, n0), (1, n0, n1)):
        np.testing.assert_array_equal(packed[TOPK_IDS][0, off:off + n].numpy(), batch[TOPK_IDS][b, :n].numpy())
        np.testing.assert_array_equal(packed[TOPK_LOGPROBS][0, off:off + n].numpy(), batch[TOPK_LOGPROBS][b, :n].numpy())
    assert not torch.isfinite(packed[TOPK_LOGPROBS][0, n0 - 1]).any()  # no target across the boundary

    bad = feats()
    bad[0]["labels"] = [-100] * len(bad[0]["labels"])
    bad[0]["labels"][-1] = bad[0]["input_ids"][-1]
    with pytest.raises(ValueError, match="captured positions differ"):
        collator(bad)
    with pytest.raises(KeyError, match="not in the offline logits store"):
        collator([dict(input_ids=[5, 6, 7], labels=[5, 6, 7])])


def test_hook_returns_none_without_offline_logits(tmp_path):
    from axolotl.utils.dict import DictDefault

    assert offline_collator_cls_and_kwargs(DictDefault({})) is None
    assert offline_collator_cls_and_kwargs(DictDefault({"distill": {"teacher": "t"}})) is None
    cls, kwargs = offline_collator_cls_and_kwargs(DictDefault({"distill": {"teacher_logits": "x"}, "sample_packing": True,
                                                               "model_config_type": "qwen2"}))
    assert cls is OfflineTopKCollator and kwargs["store_path"] == "x"
    assert kwargs["base_collator"].endswith("V2BatchSamplerDataCollatorForSeq2Seq")


def test_import_axolotl_kd_format(tmp_path, teacher, tokenizer, examples, chat_rows):
    from distill_plugin.offline.interop import import_axolotl_kd

    rows = []
    for row, e in zip(chat_rows, examples):  # vLLM prompt_logprobs: entry j is the distribution of token j+1
        ids, lps = exact_topk(teacher, e.input_ids, K)
        rows.append(dict(row, target_token_ids=ids[:-1].tolist(), logprobs=lps[:-1].tolist()))
    legacy = [dict(chat_rows[0], logprobs=[[{"token": f"token_id:{i}", "logprob": v} for i, v in zip(ii, vv)]
                                           for ii, vv in zip(rows[0]["target_token_ids"], rows[0]["logprobs"])])]
    stats = import_axolotl_kd(rows, tmp_path / "v2", tokenizer, sequence_len=96)
    import_axolotl_kd(legacy, tmp_path / "legacy", tokenizer, sequence_len=96)
    run_capture(tmp_path / "cap", teacher, tokenizer, examples)
    assert stats.rows == len(examples)
    captured, imported, old = TopKStore(tmp_path / "cap"), TopKStore(tmp_path / "v2"), TopKStore(tmp_path / "legacy")
    for i, e in enumerate(examples):
        a, b = captured.get_by_ids(e.input_ids), imported.get_by_ids(e.input_ids)
        np.testing.assert_array_equal(by_id(a.ids, a.logprobs)[0], by_id(b.ids, b.logprobs)[0])
        np.testing.assert_allclose(by_id(a.ids, a.logprobs)[1], by_id(b.ids, b.logprobs)[1], atol=1e-6)
        if i == 0:
            np.testing.assert_array_equal(old.get_by_ids(e.input_ids).ids, b.ids)


def test_vllm_backend(tmp_path, teacher_dir, tokenizer, examples):
    pytest.importorskip("vllm")
    from distill_plugin.generation.vllm import VLLMBackend

    runner = VLLMBackend(str(teacher_dir), max_logprobs=K)
    scored = runner.prompt_topk([e.input_ids for e in examples[:2]], [e.mask for e in examples[:2]], K)
    for e, (ids, lps) in zip(examples[:2], scored):
        import transformers

        ref_ids, ref_lps = exact_topk(transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dir)), e.input_ids, K)
        np.testing.assert_array_equal(by_id(ids, lps)[0], by_id(ref_ids[e.mask], ref_lps[e.mask])[0])


def test_capture_uses_the_lm_head_bias(tmp_path, teacher, examples):
    """Capture reads lm_head through ``modeling.output_head``, like the training loss: a bias counts."""
    import copy

    biased = copy.deepcopy(teacher)
    old = biased.lm_head
    biased.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        biased.lm_head.weight.copy_(old.weight)
        biased.lm_head.bias.copy_(torch.linspace(-3.0, 3.0, old.out_features))  # reorders the top-k
    (captured,) = HFBackend(biased, chunk_positions=16).prompt_topk([examples[0].input_ids], [examples[0].mask], K)
    ids, lps = exact_topk(biased, examples[0].input_ids, K)
    np.testing.assert_array_equal(by_id(*captured)[0], by_id(ids[examples[0].mask], lps[examples[0].mask])[0])
    np.testing.assert_allclose(captured[1], lps[examples[0].mask], atol=1e-4)
