"""Teacher fit: how close a student's next-token distributions are to a teacher's on given completions.

A scored sequence is ``(prompt_ids, completion_ids)``; only completion tokens are supervised, with
the usual shift: row t (the hidden state at position t) predicts token t+1, so the rows are the
positions from the prompt's last token to the completion's second-to-last token. With
p = softmax(z_teacher,t) and q = softmax(z_student,t) over the shared vocabulary (the first
``vocab_size`` ids, the tokenizer's: lm_head padding rows of either model are cut, never compared):

    kl          = Σ_t Σ_v p_v (log p_v − log q_v) / N      token-mean KL(teacher ‖ student), T = 1
    student_ce  = Σ_t −log q[c_{t+1}] / N
    teacher_ce  = Σ_t −log p[c_{t+1}] / N

N is the number of completion tokens of all sequences together (a token mean, not a mean of
per-sequence means). Everything goes through the training loss's fused chunked pass
(``losses.terms.LogitTerms`` → ``losses.kd.online_kd_loss``; ``losses.chunked.fused_linear_loss`` for
the CE-only case): the final hidden states pass through the lm_heads (``modeling.output_head``: weight,
bias, logit soft-cap) a chunk of rows at a time, so no [batch, seq, vocab] tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..losses.chunked import fused_linear_loss, select_rows
from ..losses.kd import KDSettings, softcap
from ..losses.terms import LogitTerms
from ..modeling import final_hidden_states, output_head
from ..signals import IGNORE_INDEX, DenseLogits, OutputHead, StudentRows

ScoredSequence = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, completion_ids)


@dataclass(frozen=True)
class TeacherFit:
    """Token means over ``tokens`` completion tokens of ``sequences`` sequences (None: no teacher)."""

    student_ce: float
    kl: float | None
    teacher_ce: float | None
    tokens: int
    sequences: int

    def as_dict(self) -> dict:
        return asdict(self)


def completion_batch(sequences: Sequence[ScoredSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (prompt and padding = -100)."""
    width = max(len(p) + len(c) for p, c in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(sequences):
        seq = list(prompt) + list(completion)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(list(completion), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def _cut(head: OutputHead, vocab: int) -> OutputHead:
    return OutputHead(head.weight[:vocab], None if head.bias is None else head.bias[:vocab], head.softcap, head.module)


def ce_sum(rows: torch.Tensor, head: OutputHead, targets: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Σ_i −log_softmax(softcap(rows_i Wᵀ + b))[targets_i] in fp32, chunk by chunk (no gradient)."""

    def chunk(logits, start, end):
        z = softcap(logits.float(), head.softcap)
        return F.cross_entropy(z, targets[start:end], reduction="sum").reshape(1)

    total, _ = fused_linear_loss(rows, head.weight, chunk, head.bias, chunk_size)
    return total


@torch.no_grad()
def teacher_fit(
    student: torch.nn.Module,
    sequences: Sequence[ScoredSequence],
    teacher: torch.nn.Module | None = None,
    *,
    pad_id: int = 0,
    vocab_size: int | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    desc: str | None = None,
) -> TeacherFit:
    """Token-mean KL(teacher ‖ student), student CE and teacher CE on ``sequences`` (module docstring).

    Both models must sit on one device and share the tokenizer (the caller checks that).
    ``vocab_size``: compare over the first ``vocab_size`` ids (pass ``len(tokenizer)``); default: the
    smaller lm_head. ``pad_id`` only fills padding (masked out). ``desc``: show a progress bar.
    Sequences with an empty completion add nothing; with no completion token at all the means are NaN.
    """
    student_head = output_head(student)
    vocab = min(student_head.weight.shape[0], vocab_size or 1 << 62)
    if teacher is not None:
        teacher_head = output_head(teacher)
        vocab = min(vocab, teacher_head.weight.shape[0])
        term = LogitTerms(KDSettings(divergence="forward_kl", temperature=1.0, ce_weight=1.0), chunk_size=chunk_size)
    device = student_head.weight.device
    sums = torch.zeros(3, dtype=torch.float64)  # Σ student CE, Σ KL, Σ teacher CE
    tokens = 0
    starts = range(0, len(sequences), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
        batch = {k: v.to(device) for k, v in completion_batch(sequences[start : start + batch_size], pad_id).items()}
        rows, targets, _ = select_rows(final_hidden_states(student, batch), batch["labels"])
        tokens += targets.numel()
        if teacher is None:
            sums[0] += ce_sum(rows, _cut(student_head, vocab), targets, chunk_size).double().cpu()
            continue
        teacher_rows, _, _ = select_rows(final_hidden_states(teacher, batch), batch["labels"])
        out = term(StudentRows(rows, targets, student_head), DenseLogits(teacher_rows, teacher_head, vocab))
        kd, ce = out.sums.double().cpu()
        teacher_ce = ce_sum(teacher_rows, _cut(teacher_head, vocab), targets, chunk_size).double().cpu()
        sums += torch.stack([ce, kd, teacher_ce])
    means = (sums / tokens).tolist() if tokens else [float("nan")] * 3
    with_teacher = teacher is not None
    return TeacherFit(student_ce=means[0], kl=means[1] if with_teacher else None,
                      teacher_ce=means[2] if with_teacher else None, tokens=tokens, sequences=len(sequences))


def encode_completion(tokenizer, messages: list[dict], completion: str, stopped: bool = True) -> ScoredSequence:
    """``(prompt_ids, completion_ids)`` of a chat and a completion text.

    The prompt is the chat rendered with the generation prompt (``generation.render_chat``: a final
    assistant message is a prefill and belongs to the prompt); the completion is tokenised on its own,
    plus the tokenizer's eos token when it ``stopped`` (a completion cut at the length limit has none).
    """
    from ..generation import render_chat

    prompt = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if stopped and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return prompt, ids


def tokenizer_mismatch(a, b) -> str | None:
    """Why two tokenizers cannot be compared token by token (None: same vocabulary, ids and eos)."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        differ = sum(vb.get(tok) != i for tok, i in va.items()) + len(set(vb) - set(va))
        return f"vocabularies differ: {len(va)} vs {len(vb)} tokens, {differ} token-id pairs not shared"
    if a.eos_token_id != b.eos_token_id:
        return f"eos token differs ({a.eos_token!r} vs {b.eos_token!r})"
    return None
