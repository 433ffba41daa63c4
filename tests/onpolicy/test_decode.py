"""What the on-policy sampler (``generation.decode.sample_tokens``) draws, and the work it skips.

The draw: a seed gives the completions ``model.generate`` (the former ``hf`` rollout, kept as
``HFBackend``) gives, rows stopping at different steps included; and single-token draws follow
softmax(z/T) of the student at the prompt's last position (a check that does not lean on
transformers). The work: one prefill, then one token per *running* row per step, the lm_head on the
last position only.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_plugin.generation import SamplingParams
from distill_plugin.generation.hf import HFBackend
from distill_plugin.generation.rollout import Rollout, generation_mode

# different lengths: left padding and per-row positions are exercised
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9] * 9, [10, 11, 12], [13] * 4, [14, 15]]


def student(tiny_pair, eos_bias: float = 0.0):
    """The tiny student, its tokenizer, and (``eos_bias``) a hook raising the EOS logit so rows stop
    at different steps (removed by the caller)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = eos_bias
    handle = model.lm_head.register_forward_hook(lambda m, args, out: out + bias)
    return model, tok, handle


def former_rollout(model, tok, sampling, prompts):
    """What ``Rollout.sample`` ran before: ``model.generate`` through ``HFBackend``."""
    out = [None] * len(prompts)
    with generation_mode(model):
        HFBackend(model, tok, batch_size=len(prompts)).generate(prompts, sampling, lambda i, c: out.__setitem__(i, c[0].token_ids))
    return out


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_a_seed_gives_the_samples_generate_gives(tiny_pair, temperature, top_p):
    model, tok, handle = student(tiny_pair, eos_bias=2.5)
    sampling = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=20)
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = Rollout(tok, sampling).sample(model, PROMPTS)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        former = former_rollout(model, tok, sampling, PROMPTS)
        assert ours == former
        assert torch.equal(after_ours, torch.rand(1))  # the same RNG draws were consumed
    if temperature > 0:  # rows really stopped at different steps, one of them before another ran out
        lengths = [len(c) for c in ours]
        assert len(set(lengths)) > 2 and min(lengths) < 20 and ours[lengths.index(min(lengths))][-1] == tok.eos_token_id
    handle.remove()


def test_finished_rows_leave_the_batch_and_the_head_sees_the_last_position_only(tiny_pair):
    model, tok, handle = student(tiny_pair, eos_bias=2.5)
    fed, head = [], []
    hooks = [model.get_input_embeddings().register_forward_hook(lambda m, args, out: fed.append(tuple(args[0].shape))),
             model.lm_head.register_forward_hook(lambda m, args, out: head.append(tuple(args[0].shape[:2])))]
    torch.manual_seed(0)
    out = Rollout(tok, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=20)).sample(model, PROMPTS)
    for h in hooks + [handle]:
        h.remove()
    assert fed[0] == (len(PROMPTS), max(map(len, PROMPTS)))  # the prompts, encoded once
    assert all(width == 1 for _, width in fed[1:])  # then one token per running row
    running = [sum(len(c) > t for c in out) for t in range(1, max(map(len, out)))]
    assert [rows for rows, _ in fed[1:]] == running  # a stopped row is never fed again
    assert running[-1] < len(PROMPTS)
    assert head == [(rows, 1) for rows, _ in fed]  # logits at the last position only


def test_single_token_draws_follow_the_tempered_softmax(tiny_pair):
    """N draws of the first completion token for one prompt: each token's frequency within 5
    standard errors of softmax(z/T)[token], z the student's logits at the prompt's last position."""
    from test_trainer import sharpen

    model = sharpen(AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32), std=0.3)
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    prompt, n, temperature = [5, 6, 7], 20_000, 0.5
    with torch.no_grad():
        z = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    p = torch.softmax(z / temperature, dim=-1)
    assert p.max() > 0.05  # far from uniform: a sampler ignoring T would be caught
    torch.manual_seed(0)
    draws = Rollout(tok, SamplingParams(n=1, temperature=temperature, top_p=1.0, max_tokens=1)).sample(model, [prompt] * n)
    counts = torch.bincount(torch.tensor([d[0] for d in draws]), minlength=len(p)).double()
    err = (counts / n - p).abs()
    assert bool((err <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all()), f"worst token off by {float(err.max()):.4f}"
