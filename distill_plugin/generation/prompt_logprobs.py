"""A served model's top-k log-probs at every prompt position, over the OpenAI completions API.

Two wire formats, both with the prompt given as token ids (vLLM and SGLang accept them):

    prompt_logprobs  the vLLM extension: ``{"prompt": ids, "prompt_logprobs": k, "max_tokens": 1}``;
                     ``choice["prompt_logprobs"][j]`` (j ≥ 1) maps ``"<id>"`` to
                     ``{"logprob", "rank", "decoded_token"}``: the top-k of the distribution that
                     predicts prompt token j, plus token j itself (any rank); entry 0 is null.
    echo             the legacy OpenAI form, for servers without the extension:
                     ``{"echo": true, "logprobs": k, "max_tokens": 1, "return_tokens_as_token_ids": true}``;
                     ``choice["logprobs"]["top_logprobs"][j]`` maps ``"token_id:<id>"`` to a log-prob.

Shift: the losses' row t is the distribution at position t, predicting token t+1, i.e. entry
j = t + 1; a prompt of n tokens gives rows t = 0 … n-2. Both formats carry raw log-probs (T = 1):
vLLM applies no temperature to prompt log-probs, so a capture temperature of 1 is recorded and the
loss re-tempers. Candidates are the k best by rank (or by log-prob where no rank is given): the
prompt token itself is dropped when it lies outside the top-k, and so are ids at or above
``vocab_size`` (lm_head padding rows; their mass, ~0, ends up in the loss's tail bucket).
"""

from __future__ import annotations

import numpy as np

from .base import TopK

APIS = ("prompt_logprobs", "echo")


def score_body(model: str, ids, k: int, api: str, token_ids: bool = True) -> dict:
    """The ``/completions`` body asking for the top-``k`` at every position of ``ids``.

    ``token_ids=False`` (echo only) asks for token texts instead of ids (the tokenizer probe)."""
    body = {"model": model, "prompt": [int(t) for t in ids], "max_tokens": 1, "temperature": 1.0}
    if api == "prompt_logprobs":
        body["prompt_logprobs"] = k
    elif api == "echo":
        body.update(echo=True, logprobs=k, return_tokens_as_token_ids=token_ids)
    else:
        raise ValueError(f"unknown prompt log-prob API {api!r} ({' | '.join(APIS)})")
    return body


def _token_id(key) -> int:
    key = str(key)
    if key.startswith("token_id:"):
        key = key[len("token_id:"):]
    if not key.lstrip("-").isdigit():
        raise ValueError(f"candidate {key!r} is token text, not an id (the server ignored return_tokens_as_token_ids)")
    return int(key)


def prompt_entries(choice: dict, n: int, api: str) -> list[dict]:
    """Entries j = 1 … n-1 as ``{id: (logprob, rank or None, decoded text or None)}``."""
    if api == "prompt_logprobs":
        raw = choice.get("prompt_logprobs")
        if raw is None:
            raise KeyError("the response has no prompt_logprobs")
        entries = [{_token_id(key): (float(v["logprob"]), v.get("rank"), v.get("decoded_token"))
                    for key, v in (entry or {}).items()} for entry in raw[1:n]]
    else:
        raw = (choice.get("logprobs") or {}).get("top_logprobs")
        if raw is None:
            raise KeyError("the response has no logprobs.top_logprobs")
        entries = [{_token_id(key): (float(v), None, None) for key, v in (entry or {}).items()} for entry in raw[1:n]]
    if len(entries) != n - 1:
        raise ValueError(f"{n} prompt tokens but {len(entries) + 1} prompt log-prob entries")
    return entries


def parse_topk(choice: dict, n: int, k: int, api: str, vocab_size: int | None = None) -> TopK:
    """``([n-1, k] int64 ids, [n-1, k] float32 log-probs)``, row t = entry t+1, sorted by decreasing
    log-prob; missing candidates are id 0 with log-prob -inf."""
    ids = np.zeros((n - 1, k), dtype=np.int64)
    vals = np.full((n - 1, k), -np.inf, dtype=np.float32)
    for t, entry in enumerate(prompt_entries(choice, n, api)):
        cands = [(lp, tok) for tok, (lp, rank, _) in entry.items()
                 if (rank is None or rank <= k) and (vocab_size is None or tok < vocab_size)]
        cands.sort(key=lambda c: -c[0])
        for j, (lp, tok) in enumerate(cands[:k]):
            ids[t, j], vals[t, j] = tok, lp
    return ids, vals


def decoded_prompt_tokens(choice: dict, ids, api: str) -> list[str | None]:
    """The server's text of prompt tokens 1 … n-1 (None where it gives none): the tokenizer probe.

    ``prompt_logprobs``: the prompt token's own ``decoded_token``; ``echo`` (asked with
    ``token_ids=False``): ``logprobs.tokens``."""
    if api == "prompt_logprobs":
        return [(entry.get(int(tok)) or (None, None, None))[2]
                for entry, tok in zip(prompt_entries(choice, len(ids), api), ids[1:])]
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    return [tokens[j] if j < len(tokens) else None for j in range(1, len(ids))]
