"""Batched sampling from a causal LM with its KV cache: one forward per new token, finished rows dropped.

``sample_tokens(model, prompts, sampling, stop_ids, pad_id)`` returns one completion per token-id
prompt: its token ids, cut after the first stop token (kept) or at ``sampling.max_tokens``.

Per step, for every row still running, with z the model's fp32 logits at the row's **last position
only** (the forward is asked for ``logits_to_keep=1``: never [B, T, V]):

    scores = z / T, then nucleus filtering at ``top_p``   (transformers' ``TemperatureLogitsWarper``
             and ``TopPLogitsWarper``, each only where it changes something, as ``generate`` does)
    token  ~ softmax(scores)                               (T = 0: argmax z)

The prompts are left-padded (position ids count each prompt's real tokens from 0) and encoded once
(the prefill fills the KV cache); every later step feeds one token per running row. When a row
samples a stop token its cache entries, mask and position are dropped, so later steps run on the
remaining rows only.

The draw is ``torch.multinomial`` over a [prompts, V] probability buffer that keeps a row for every
prompt (a finished row keeps its last distribution; its draw is discarded). So the sampler consumes
the global torch RNG exactly as ``model.generate(do_sample=True, top_k=0, temperature=T, top_p=p)``
does, and a seed gives the same completions as that call. Only this distribution is sampled: a
checkpoint's ``generation_config`` extras (a repetition penalty, its own top-k or min-p), which
``generate`` would add, are not applied — an on-policy sample comes from the student's softmax(z/T).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from .base import SamplingParams


def _warpers(sampling: SamplingParams):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    out = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p))
    return out


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs through
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int):
    """``(input_ids, attention_mask, position_ids)`` [B, W]: prompts right-aligned so that every row's
    next token is at column W; position ids count real tokens from 0 (0 on padding)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, ids in enumerate(prompts):
        input_ids[b, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        mask[b, width - len(ids):] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 0)
    return input_ids, mask, positions


def sample_tokens(model: torch.nn.Module, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                  stop_ids: Sequence[int], pad_id: int) -> list[list[int]]:
    """One completion per prompt (see the module docstring); ``model`` in eval mode, called under
    ``torch.inference_mode`` (nothing it returns or caches enters the training graph: the completions
    leave as Python ints). ``sampling.n`` must be 1."""
    if sampling.n != 1:
        raise ValueError(f"sample_tokens draws one completion per prompt (n = 1), got n = {sampling.n}")
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample_tokens: empty prompt (nothing to condition the first token on)")
    device = next(model.parameters()).device
    input_ids, mask, positions = (t.to(device) for t in left_padded(prompts, pad_id))
    n, limit = len(prompts), sampling.max_tokens
    # as generate: an all-ones mask is dropped (no padding: the causal mask alone, cheaper to build)
    attention = None if bool(mask.all()) else mask
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    sample = sampling.temperature > 0
    warpers = _warpers(sampling) if sample else []
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    tokens = torch.full((n, limit), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((n,), limit, dtype=torch.long)
    rows = torch.arange(n, device=device)  # prompt index of each running row
    step_ids, step_positions, cache, probs = input_ids, positions, None, None
    with torch.inference_mode():  # no autograd bookkeeping per op: ~20 % of a small model's decode step
        for t in range(limit):
            out = model(input_ids=step_ids, attention_mask=attention, position_ids=step_positions,
                        past_key_values=cache, use_cache=True, **extra)
            cache = out.past_key_values
            logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)
            del out
            if sample:
                for warp in warpers:
                    logits = warp(None, logits)
                p = torch.softmax(logits, dim=-1)
                if probs is None:
                    probs = p
                else:
                    probs[rows] = p
                token = torch.multinomial(probs, num_samples=1).squeeze(1)[rows]
            else:
                token = logits.argmax(dim=-1)
            tokens[rows, t] = token
            done = torch.isin(token, stops)
            if bool(done.any()):
                lengths[rows[done].cpu()] = t + 1
                if bool(done.all()):
                    break
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, token, step_positions = rows[keep], token[keep], step_positions[keep]
                attention = attention[keep] if attention is not None else None
            step_ids = token[:, None]
            step_positions = step_positions[:, -1:] + 1
            if attention is not None:
                attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
    tokens = tokens.cpu()
    return [tokens[b, : int(lengths[b])].tolist() for b in range(n)]
