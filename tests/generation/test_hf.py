"""The transformers engine of the generation layer on a tiny local model: chat and token-id prompts,
prefills, stop/length, per-token log-probs against a plain forward, prompt top-k against full logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_plugin.generation import Completion, SamplingParams, make_backend
from distill_plugin.generation.hf import HFBackend

CHAT = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def backend(tiny_pair) -> HFBackend:
    return make_backend("hf", str(tiny_pair[0]), batch_size=2)


def run(backend, prompts, sampling) -> list[list[Completion]]:
    got = {}
    backend.generate(prompts, sampling, lambda i, completions: got.setdefault(i, completions))
    assert sorted(got) == list(range(len(prompts)))  # every prompt reported exactly once
    return [got[i] for i in range(len(prompts))]


def test_chat_and_token_id_prompts_sample_the_same(backend):
    sampling = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_tokens=12, seed=7)
    (chat,) = run(backend, [CHAT], sampling)
    ids, text = backend.encode(CHAT)
    (tokens,) = run(backend, [ids], sampling)
    assert len(chat) == 3 and [c.token_ids for c in chat] == [c.token_ids for c in tokens]
    assert chat[0].prompt_text == text and tokens[0].prompt_text is None
    for c in chat:
        assert c.prompt_tokens == len(ids) and c.completion_tokens == len(c.token_ids)
        assert c.finish_reason in ("stop", "length")
        stop = c.finish_reason == "stop"
        assert (c.token_ids[-1] in backend.stop_ids()) == stop
        assert len(c.token_ids) == (len(c.token_ids) if stop else 12)
        body = c.token_ids[:-1] if stop else c.token_ids
        assert c.text == backend.tokenizer.decode(body, skip_special_tokens=False)


def test_batches_and_padding_do_not_change_greedy_outputs(backend):
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    prompts = [CHAT, [{"role": "user", "content": "A much longer question, to force left padding?"}], CHAT]
    together = [c[0].token_ids for c in run(backend, prompts, greedy)]
    alone = [run(backend, [p], greedy)[0][0].token_ids for p in prompts]
    assert together == alone and together[0] == together[2]


def test_length_finish(backend):
    (out,) = run(backend, [CHAT], SamplingParams(n=2, temperature=1.0, max_tokens=1, seed=0))
    assert all(len(c.token_ids) == 1 for c in out)
    assert all(c.finish_reason == ("stop" if c.token_ids[0] in backend.stop_ids() else "length") for c in out)


def test_prefill_is_continued_not_repeated(backend):
    prefilled = CHAT + [{"role": "assistant", "content": "<think>\n"}]
    (out,) = run(backend, [prefilled], SamplingParams(n=1, temperature=0.0, max_tokens=4))
    plain = backend.encode(CHAT)[1]
    assert out[0].prompt_text == plain + "<think>\n"
    assert backend.encode(prefilled)[0] == backend.tokenizer(plain + "<think>\n", add_special_tokens=False)["input_ids"]


def test_logprobs_are_the_models_own(backend):
    """Per generated token: log_softmax of the raw logits (T = 1) at the step that produced it."""
    sampling = SamplingParams(n=2, temperature=1.3, top_p=0.9, max_tokens=10, seed=3, logprobs=True)
    ids = backend.encode(CHAT)[0]
    (out,) = run(backend, [ids], sampling)
    for c in out:
        assert len(c.logprobs) == len(c.token_ids)
        full = torch.tensor([ids + c.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(full).logits[0].double(), -1)
        # the distribution at position t predicts token t+1
        ref = [logp[len(ids) - 1 + j, tok].item() for j, tok in enumerate(c.token_ids)]
        np.testing.assert_allclose(c.logprobs, ref, atol=1e-4)


def test_prompt_topk_matches_full_logits(backend):
    ids = backend.encode(CHAT)[0] + [5, 6, 7]
    short = ids[:4]
    masks = [np.arange(len(ids)) % 2 == 0, np.ones(len(short), dtype=bool)]
    got = backend.prompt_topk([ids, short], masks, k=5, temperature=2.0)
    for seq, mask, (top_ids, top_vals) in zip([ids, short], masks, got):
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(torch.tensor([seq])).logits[0].double() / 2.0, -1)
        ref_vals, ref_ids = logp[torch.from_numpy(mask)].topk(5, dim=-1)
        assert top_ids.shape == (mask.sum(), 5)
        np.testing.assert_array_equal(top_ids, ref_ids.numpy())
        np.testing.assert_allclose(top_vals, ref_vals.numpy(), atol=1e-5)
