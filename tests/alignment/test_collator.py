"""The collator's batch, whole: for every aligned pair (p, q) it puts in a padded batch, the student
and the teacher read the same text after p and after q. This is the property the loss relies on (the
two next-token distributions describe one continuation); a position off by one, a padding shift
applied to the wrong side or a region mapped to the wrong teacher offset breaks it."""

from __future__ import annotations

import pytest
import torch

from distill_plugin.alignment.collator import CrossTokenizerCollator
from distill_plugin.alignment.tokens import token_bytes
from distill_plugin.testing.addition import make_split
from distill_plugin.testing.tiny import build_sp_tokenizer, build_tokenizer


def features(tok, rows):
    """Axolotl-like examples: the chat rendered with the student's template, the answer supervised."""
    out = []
    for row in rows:
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ends = torch.tensor([len(token_bytes(tok)[i]) for i in ids]).cumsum(0)
        start = len(text[: text.rindex(row["messages"][-1]["content"])].encode())
        out.append({"input_ids": ids, "labels": [i if e > start else -100 for i, e in zip(ids, ends.tolist())],
                    "attention_mask": [1] * len(ids)})
    return out


def text_after(pieces, ids, position):
    return b"".join(pieces[i] for i in ids[position + 1:])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_every_aligned_pair_reads_the_same_continuation(tmp_path, padding_side):
    teacher_dir = tmp_path / "teacher"
    build_tokenizer(teacher_dir)
    student, teacher = build_sp_tokenizer(), build_tokenizer()
    student.padding_side = padding_side
    collate = CrossTokenizerCollator(student, teacher_tokenizer=str(teacher_dir),
                                     base_collator="transformers.DataCollatorForSeq2Seq")
    batch = collate(features(student, make_split(24, seed=5)), return_tensors="pt")
    s_pieces, t_pieces = token_bytes(student), token_bytes(teacher)
    pairs = 0
    for b in range(batch["input_ids"].shape[0]):
        s_ids = batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist()
        shift = batch["input_ids"].shape[1] - len(s_ids) if padding_side == "left" else 0
        t_ids = batch["teacher_input_ids"][b][batch["teacher_attention_mask"][b].bool()].tolist()
        for p, q in zip(batch["aligned_student_positions"][b].tolist(), batch["aligned_teacher_positions"][b].tolist()):
            if p < 0:
                continue
            assert batch["labels"][b, p + 1] != -100  # the student's next token is supervised
            s_next, t_next = s_pieces[s_ids[p - shift + 1]], t_pieces[t_ids[q + 1]]
            # each side's next token is where the other side's text goes on
            assert text_after(t_pieces, t_ids, q).startswith(s_next), (b, p, q)
            assert text_after(s_pieces, s_ids, p - shift).startswith(t_next), (b, p, q)
            pairs += 1
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert pairs > 0.6 * supervised  # most answer positions align (72 % on this pair)
