"""A causal LM scored against a :class:`~.source.MarkovSource` (the formulas: ``source.py``).

Held-out rows are teacher-forced in one right-padded batch (``evaluation.completion_batch``: row t
predicts t+1, prompt and padding masked); the model's own answers are sampled at temperature 1 from
the chat prompt with a KV cache. Every tokenizer gets the sequence KL and the sample scores; the
exact per-position KL needs every held-out answer to be tokenised one token per letter (a
byte-level tokenizer), and is ``None`` otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation import completion_batch
from .core import Encoded, encode
from .source import MarkovSource, exact_kl, sample_scores

IGNORE = -100


def letter_ids(tok, alphabet: str) -> list[int] | None:
    """Each letter's token id, or None when some letter is not a single token on its own."""
    ids = [tok(ch, add_special_tokens=False)["input_ids"] for ch in alphabet]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


@torch.no_grad()
def answer_log_probs(model, examples: list[Encoded], pad_id: int) -> list[torch.Tensor]:
    """Per example, the model's log-softmax [len(target_ids), V] at the rows that predict its answer."""
    batch = completion_batch([(e.prompt_ids, e.target_ids) for e in examples], pad_id)
    logits = model(input_ids=batch["input_ids"].to(model.device),
                   attention_mask=batch["attention_mask"].to(model.device)).logits.float().cpu()
    supervised = batch["labels"][:, 1:] != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    return [log_probs[i][supervised[i]] for i in range(len(examples))]


@torch.no_grad()
def sample_answers(model, prompt_ids: list[int], eos_id: int, n: int, max_new_tokens: int,
                   seed: int) -> tuple[list[list[int]], list[float]]:
    """``n`` answers sampled at T = 1 (full distribution) and each one's log Q(y), its end included."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_ids] * n, device=model.device)
    out = model(input_ids=ids, use_cache=True)
    done = torch.zeros(n, dtype=torch.bool)
    total, tokens = torch.zeros(n, dtype=torch.float64), []
    for _ in range(max_new_tokens):
        log_p = torch.log_softmax(out.logits[:, -1].float().cpu(), dim=-1)
        nxt = torch.multinomial(log_p.exp(), 1, generator=gen).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        total += torch.where(done, 0.0, log_p.gather(1, nxt[:, None]).squeeze(1).double())
        tokens.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        out = model(input_ids=nxt[:, None].to(model.device), past_key_values=out.past_key_values, use_cache=True)
    rows = torch.stack(tokens, dim=1).tolist()
    return [r[: r.index(eos_id)] if eos_id in r else r for r in rows], total.tolist()


def source_scores(model, tok, source: MarkovSource, rows: list[dict], reference: list[str],
                  samples: int = 200, seed: int = 0) -> dict:
    """Exact KL (or None), sequence KL, validity, entropy ratio and coverage of ``model`` (with its
    tokenizer ``tok``) on the held-out ``rows``; ``reference``: ``samples`` sequences of the source."""
    examples = [encode(tok, row) for row in rows]
    per_row = answer_log_probs(model.eval(), examples, tok.pad_token_id)
    xs = [row["answer"] for row in rows]
    length = source.length
    seq_kl = np.mean([(source.log_prob(x) - float(lp.gather(1, torch.tensor(e.target_ids)[:, None]).sum())) / length
                      for x, lp, e in zip(xs, per_row, examples)])
    ids = letter_ids(tok, source.alphabet)
    one_per_letter = ids is not None and all(e.target_ids[:length] == [ids[source.alphabet.index(c)] for c in x]
                                             for e, x in zip(examples, xs))
    kl = None
    if one_per_letter:
        p = np.stack([source.dist(x[:t]) for x in xs for t in range(length)])
        log_q = torch.cat([lp[:length, ids] for lp in per_row]).double().numpy()
        kl = exact_kl(p, log_q)
    answers, log_q_y = sample_answers(model, examples[0].prompt_ids, tok.eos_token_id, samples,
                                      max(len(e.target_ids) for e in examples) + 4, seed)
    texts = [tok.decode(a, skip_special_tokens=True).strip() for a in answers]
    h = source.entropy_rate(xs)
    return {"kl_to_source": kl, "seq_kl_to_source": float(seq_kl), "entropy_rate": h,
            **sample_scores(source, texts, log_q_y, reference, h), "sample": texts[0]}
