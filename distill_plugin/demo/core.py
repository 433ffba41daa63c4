"""The demo's model-side logic: tokenisation, the teacher's training loop, and evaluation.

Everything here is plain torch + transformers on CPU; the glue (CLI, recipes, subprocesses, the
table) lives in ``run.py``.

Supervision matches Axolotl's ``chat_template`` with ``roles_to_train: [assistant]``: the loss is on
the assistant turn only (``<think>`` working, answer and ``<|im_end|>``), never on the prompt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill_plugin.evaluation import completion_batch, teacher_fit

from ..testing.addition import final_answer

IGNORE = -100


@dataclass
class Encoded:
    """One conversation: the prompt (rendered with the generation prompt) and the assistant tokens."""

    prompt_ids: list[int]
    target_ids: list[int]
    answer: str


def encode(tokenizer, row: dict) -> Encoded:
    """Split a chat row into the generation prompt and the supervised assistant continuation."""
    messages = row["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template's generation prompt is not a prefix of the full conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # The assistant turn ends with <|im_end|>; the template's trailing newline is not supervised.
    target = full[len(prompt):].rstrip("\n")
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return Encoded(prompt_ids, target_ids, row["answer"])


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (prompt and padding masked out)."""
    return completion_batch([(e.prompt_ids, e.target_ids) for e in batch], pad_id)


def shifted_logits_and_labels(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at supervised positions (next-token) and their targets, flattened."""
    device = model.device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    logits, labels = logits[:, :-1], batch["labels"][:, 1:].to(device)
    keep = labels != IGNORE
    return logits[keep].float(), labels[keep]


def train_causal_lm(
    model,
    examples: list[Encoded],
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    warmup: int = 0,
    weight_decay: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """AdamW with linear warmup then cosine decay to 10%; shuffled epochs. Returns per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([examples[i] for i in idx], pad_id)
        logits, labels = shifted_logits_and_labels(model, batch)
        loss = F.cross_entropy(logits, labels)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return losses


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], eos_id: int, max_new_tokens: int, batch_size: int = 128) -> list[list[int]]:
    """Greedy decoding with a KV cache. Prompts are grouped by length, so no padding is needed."""
    model.eval()
    outputs: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idxs in by_len.values():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start : start + batch_size]
            ids = torch.tensor([prompts[i] for i in chunk], device=model.device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=eos_id,
            )
            for row, i in zip(out[:, ids.shape[1] :].tolist(), chunk):
                outputs[i] = row[: row.index(eos_id) + 1] if eos_id in row else row
    return outputs  # type: ignore[return-value]


@torch.no_grad()
def exact_match(model, tokenizer, examples: list[Encoded], max_new_tokens: int | None = None) -> tuple[float, list[str]]:
    """Fraction of held-out problems whose greedy ``final_answer`` equals the true answer."""
    max_new = max_new_tokens or (max(len(e.target_ids) for e in examples) + 8)
    generated = greedy_generate(model, [e.prompt_ids for e in examples], tokenizer.eos_token_id, max_new)
    texts = [tokenizer.decode(g, skip_special_tokens=False) for g in generated]
    correct = sum(final_answer(t) == e.answer for t, e in zip(texts, examples))
    return correct / len(examples), texts


def heldout_losses(model, examples: list[Encoded], pad_id: int, teacher=None, batch_size: int = 64) -> dict[str, float]:
    """Token-mean CE on the assistant tokens and, given a teacher, token-mean KL(teacher ‖ model), T=1
    (``distill_plugin.evaluation.teacher_fit``: the fused chunked loss, never the full logits)."""
    fit = teacher_fit(model.eval(), [(e.prompt_ids, e.target_ids) for e in examples], teacher, pad_id=pad_id,
                      batch_size=batch_size)
    out = {"ce": fit.student_ce, "tokens": fit.tokens}
    if teacher is not None:
        out["kl_to_teacher"] = fit.kl
    return out


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
