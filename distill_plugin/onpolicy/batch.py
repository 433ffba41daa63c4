"""Chat-template batches → prompts, and prompts + sampled completions → training rows with masks.

Input rows are what Axolotl's ``chat_template`` (or TRL's SFT) collator produced: ``input_ids``,
unshifted ``labels`` (``labels[t] = input_ids[t]`` where supervised, -100 elsewhere) and
``attention_mask``, padded on the right or on the left. The **prompt** of a row is everything up to
the last assistant turn's content, i.e. its real (attended) tokens before the first position of the
last contiguous run of supervised labels; the **completion** is what a model samples after it. A
row with no supervised token has no prompt: it is passed through unchanged (its labels are all
-100, so it adds nothing to the loss).

Output rows are right-padded (training layout: positions 0..n-1 without position_ids):

    input_ids       prompt ‖ completion[:e] ‖ pad …
    attention_mask  1 on prompt and completion[:e], 0 on padding
    labels          -100 on prompt, completion[:e], -100 on padding

with e = 1 + index of the first EOS in the completion (the EOS itself is supervised: the student
must learn to stop), or its full length when it has none. Everything after the first EOS is padding,
found by position, never by comparing ids with ``pad_id`` — so a tokenizer whose pad equals its
EOS works. With the loss's shift convention (row t predicts token t+1, mask ``labels[t+1] != -100``)
the supervised rows are the last prompt position up to the position before the first EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..signals import IGNORE_INDEX


def is_packed(position_ids: torch.Tensor | None) -> bool:
    """True when a row holds several documents (its position ids restart inside the row)."""
    return position_ids is not None and bool((position_ids[:, 1:] < position_ids[:, :-1]).any())


def split_prompts(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  position_ids: torch.Tensor | None = None) -> list[list[int] | None]:
    """Per row, the prompt token ids (see the module docstring), or None for a row that supervises nothing."""
    if is_packed(position_ids):
        raise ValueError("on-policy distillation cannot split packed rows (several documents per row) into prompts; "
                         "turn sample packing off")
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    supervised = (labels != IGNORE_INDEX) & real
    prompts = []
    for b in range(input_ids.shape[0]):
        row = supervised[b].tolist()
        if not any(row):
            prompts.append(None)
            continue
        start = len(row) - 1 - row[::-1].index(True)
        while start > 0 and row[start - 1]:  # walk back to the start of the last supervised run
            start -= 1
        keep = real[b].clone()
        keep[start:] = False
        prompts.append(input_ids[b][keep].tolist())
    return prompts


def completion_length(tokens: Sequence[int], eos_ids: Sequence[int]) -> int:
    """Tokens kept from a sampled completion: up to and including the first EOS, else all."""
    stops = set(eos_ids)
    return next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))


def build_rows(prompts: Sequence[list[int] | None], completions: Sequence[Sequence[int] | None], pad_id: int,
               eos_ids: Sequence[int], passthrough: dict | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (see the module docstring).

    ``passthrough``: the original batch, whose rows with ``prompts[b] is None`` are kept as they
    were (their attended tokens, labels all -100).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    rows = []  # (token ids, number of prompt tokens)
    for b, (prompt, completion) in enumerate(zip(prompts, completions)):
        if prompt is None:
            if passthrough is None:
                rows.append(([], 0))
                continue
            ids, mask = passthrough["input_ids"][b], passthrough.get("attention_mask")
            kept = ids[mask[b].bool()] if mask is not None else ids
            rows.append((kept.tolist(), len(kept)))  # all prompt: nothing supervised
            continue
        completion = list(completion or [])
        rows.append((list(prompt) + completion[:completion_length(completion, eos_ids)], len(prompt)))
    width = max([len(ids) for ids, _ in rows] + [1])
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        labels[b, n_prompt: len(ids)] = input_ids[b, n_prompt: len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def replace_completions(batch: dict, completions: Sequence[Sequence[int] | None], prompts, pad_id: int,
                        eos_ids: Sequence[int]) -> dict:
    """The batch with its completions replaced: new ``input_ids``/``attention_mask``/``labels`` on the
    batch's device; ``position_ids`` (unpacked rows only) rebuilt as 0..n-1; other keys, which
    describe the old tokens, dropped."""
    device = batch["input_ids"].device
    rows = build_rows(prompts, completions, pad_id, eos_ids, passthrough=batch)
    out = {k: v.to(device) for k, v in rows.items()}
    if "position_ids" in batch:
        out["position_ids"] = torch.arange(out["input_ids"].shape[1], device=device).expand_as(out["input_ids"]).clone()
    return out
