"""Capture against a teacher padded beyond its tokenizer, a teacher with another tokenizer, and k > V.

Regression (issue 11): a teacher whose lm_head has more rows than its tokenizer (Qwen2-72B:
152,064 vs 151,936 in the offline recipe's own pairing) used to be captured over all rows, and
training crashed mid-run on an id beyond the student's vocabulary.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_plugin.offline import capture as cap
from distill_plugin.offline.store import TopKStore, read_meta, tokenizer_hash
from offline_helpers import by_id

K = 8
PADDED_ROWS = 400


@pytest.fixture(scope="module")
def padded_teacher(tmp_path_factory, teacher_dir, tokenizer):
    """The tiny teacher with its lm_head padded to 400 rows whose logits would win every top-k."""
    out = tmp_path_factory.mktemp("padded")
    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir))
    vocab = len(tokenizer)
    model.resize_token_embeddings(PADDED_ROWS, mean_resizing=False)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[vocab:] = 50 * head[: PADDED_ROWS - vocab]
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_padding_rows_are_cut(tmp_path, padded_teacher, tokenizer, chat_jsonl):
    vocab = len(tokenizer)
    cap.capture_teacher(padded_teacher, tmp_path / "store", data=chat_jsonl, tokenizer=str(padded_teacher), k=K,
                        sequence_len=96, progress=False)
    meta = read_meta(tmp_path / "store")
    assert meta.vocab_size == vocab and meta.extra["teacher_lm_head_rows"] == PADDED_ROWS
    assert meta.extra["teacher_vocab_size"] == vocab and meta.extra["teacher_tokenizer_hash"] == tokenizer_hash(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(padded_teacher)).eval()
    store = TopKStore(tmp_path / "store")
    for e in cap.examples_from_jsonl(chat_jsonl, tokenizer, sequence_len=96)[:4]:
        with torch.no_grad():
            logits = model(torch.tensor([e.input_ids])).logits[0].float()
        assert (logits.argmax(-1) >= vocab).all()  # uncut, the padding rows would take the top-k
        ref_vals, ref_ids = torch.log_softmax(logits[:, :vocab], -1).topk(K, -1)
        row = store.get_by_ids(e.input_ids)
        assert row.ids.max() < vocab
        got, want = by_id(row.ids, row.logprobs), by_id(ref_ids[e.mask].numpy(), ref_vals[e.mask].numpy())
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=0.05)  # 8-bit codec


def test_teacher_with_one_more_token_is_refused(tmp_path, teacher_dir, chat_jsonl):
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<one-more>"])
    tok.save_pretrained(str(other))
    with pytest.raises(ValueError, match=r"--teacher .* its tokenizer differs from the data's"):
        cap.capture_teacher(other, tmp_path / "store", data=chat_jsonl, tokenizer=str(teacher_dir), k=K,
                            sequence_len=96, progress=False)
    assert not (tmp_path / "store").exists()


def test_top_k_above_the_vocabulary_is_refused(tmp_path, teacher_dir, tokenizer, chat_jsonl):
    with pytest.raises(ValueError, match=rf"--top-k 1000 is larger than the vocabulary \({len(tokenizer)} tokens\)"):
        cap.capture_teacher(teacher_dir, tmp_path / "store", data=chat_jsonl, k=1000, sequence_len=96, progress=False)
