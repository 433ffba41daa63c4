"""``distill.teacher_server``: through Axolotl's own loader, the one-source rule, settings without
effect, and the wire format and layout helpers of the served teacher (no server needed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from distill_plugin.args import DistillConfig
from distill_plugin.generation.prompt_logprobs import parse_topk, score_body
from distill_plugin.teachers.server import documents

SERVER = {"url": "http://10.0.0.2:8000/v1", "model": "Qwen/Qwen2.5-72B-Instruct", "top_k": 64,
          "api_key_env": "TEACHER_API_KEY", "timeout_s": 120, "max_concurrency": 8}


def test_block_survives_axolotl_loader():
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault({"base_model": "Qwen/Qwen2.5-7B", "plugins": ["distill_plugin.DistillPlugin"],
                       "distill": {"teacher_server": SERVER, "temperature": 2.0, "topk_tail": "renormalize"},
                       "datasets": [{"path": "data.jsonl", "type": "chat_template"}], "micro_batch_size": 1,
                       "num_epochs": 1, "learning_rate": 1e-5, "output_dir": "out", "sequence_len": 512})
    prepare_plugins(cfg)
    config = DistillConfig.model_validate(dict(validate_config(cfg)["distill"]))
    assert config.teacher_server.model_dump() == {**SERVER, "prefetch_steps": 1, "max_outage_s": 600.0}
    assert config.topk_tail == "renormalize" and config.temperature == 2.0


@pytest.mark.parametrize("extra,needle", [
    ({"teacher": "Qwen/Qwen2.5-72B"}, "`teacher_server` is the only teacher source"),
    ({"teacher_logits": "logits/"}, "`teacher_server` is the only teacher source"),
    ({"topk": 8}, "distill.topk has no effect with a served teacher (`teacher_server`, whose `top_k` sets k)"),
    ({"teacher_dtype": "float32"}, "distill.teacher_dtype has no effect with a served teacher"),
    ({"hidden_weight": 1.0}, "`hidden_weight` > 0 needs the online `teacher`"),
])
def test_refused_next_to_a_served_teacher(extra, needle):
    with pytest.raises(ValidationError, match=re.escape(needle)):
        DistillConfig.model_validate({"teacher_server": SERVER, **extra})


@pytest.mark.parametrize("server,needle", [
    ({**SERVER, "top_k": 0}, "top_k"),
    ({**SERVER, "url": None}, "url"),
    ({**SERVER, "tok_k": 8}, "tok_k"),
    ({**SERVER, "max_concurrency": "8"}, "max_concurrency"),
    ({k: v for k, v in SERVER.items() if k != "model"}, "model"),
])
def test_server_keys_are_strict(server, needle):
    with pytest.raises(ValidationError, match=needle):
        DistillConfig.model_validate({"teacher_server": server})


def test_sparse_and_tokenizer_settings_apply_to_a_served_teacher():
    config = DistillConfig.model_validate({"teacher_server": SERVER, "topk_tail": "renormalize", "check_tokenizer": False})
    assert config.topk_tail == "renormalize" and not config.check_tokenizer
    with pytest.raises(ValidationError, match="distill.check_tokenizer has no effect"):
        DistillConfig.model_validate({"teacher_logits": "logits/", "check_tokenizer": False})


def test_documents_follow_padding_and_packing():
    """Spans end at the token after the last supervised position; packed documents are split where
    position ids restart; padding and unsupervised documents are not sent."""
    ids = torch.arange(12).reshape(1, 12) + 100
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 0, 0]])
    attn = torch.tensor([[1] * 9 + [0] * 3])
    labels = torch.full((1, 12), -100)
    labels[0, 2:4] = ids[0, 2:4]  # document 1: tokens 2, 3 supervised
    labels[0, 5] = ids[0, 5]  # document 2: token 5 only (6 is not), document 3: nothing
    spans = documents(ids, labels, attn, pos)
    assert spans == [(0, 0, [100, 101, 102, 103]), (0, 4, [104, 105])]
    padded = documents(ids, labels, attn)  # no position ids: one document up to the padding
    assert padded == [(0, 0, ids[0, :6].tolist())]


def test_parse_topk_shift_rank_and_vocab_cut():
    """Entry j (the distribution predicting prompt token j) becomes row t = j - 1; the prompt token
    outside the top-k (rank 3 > k = 2) and ids past the vocabulary are dropped."""
    choice = {"prompt_logprobs": [None,
                                  {"5": {"logprob": -0.1, "rank": 1}, "7": {"logprob": -2.5, "rank": 2},
                                   "9": {"logprob": -4.0, "rank": 3}},
                                  {"300": {"logprob": -0.2, "rank": 1}, "4": {"logprob": -1.9, "rank": 2}}]}
    ids, vals = parse_topk(choice, 3, 2, "prompt_logprobs", vocab_size=261)
    assert ids.tolist() == [[5, 7], [4, 0]]
    np.testing.assert_array_equal(vals, np.array([[-0.1, -2.5], [-1.9, -np.inf]], dtype=np.float32))
    echo = {"logprobs": {"top_logprobs": [None, {"token_id:7": -2.5, "token_id:5": -0.1, "token_id:9": -4.0},
                                          {"token_id:300": -0.2, "token_id:4": -1.9}, None]}}
    ids_echo, vals_echo = parse_topk(echo, 3, 2, "echo", vocab_size=261)
    assert ids_echo.tolist() == ids.tolist()
    np.testing.assert_array_equal(vals_echo, vals)
    with pytest.raises(ValueError, match="token text"):
        parse_topk({"logprobs": {"top_logprobs": [None, {"the": -0.1}]}}, 2, 1, "echo")
    assert score_body("m", [1, 2], 4, "echo")["return_tokens_as_token_ids"] is True
