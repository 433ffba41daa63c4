"""Packed vs unpacked logits, per document, for the student and the teacher.

With ``sample_packing`` and ``attn_implementation: sdpa`` or ``eager`` Axolotl 0.19 drops the
attention mask of a packed row and passes ``position_ids`` that restart at 0 at every document;
transformers then builds a block-diagonal causal mask. The teacher gets the student's exact batch
(``TeacherModelSource``) and, by default, the student's attention implementation (``load_teacher``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_plugin.args import DistillConfig
from distill_plugin.teachers import load_teacher

DOCS = ["12+7=19", "a much longer second document, 3+4=7", "x", "the fourth one: 100+1=101"]


def packed_batch(tokenizer):
    ids = [tokenizer(doc)["input_ids"] for doc in DOCS]
    input_ids = torch.tensor([sum(ids, [])])
    position_ids = torch.tensor([[p for doc in ids for p in range(len(doc))]])
    return ids, input_ids, position_ids


def per_document_gap(model, tokenizer, attention_mask: bool = False) -> list[float]:
    """max |packed − alone| logit difference of each document."""
    ids, input_ids, position_ids = packed_batch(tokenizer)
    extra = {"attention_mask": torch.ones_like(input_ids)} if attention_mask else {}
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits[0]
        gaps, start = [], 0
        for doc in ids:
            alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
            gaps.append((packed[start:start + len(doc)] - alone).abs().max().item())
            start += len(doc)
    return gaps


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_match_unpacked(tiny_pair, attn):
    teacher_path, student_path = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    student = AutoModelForCausalLM.from_pretrained(student_path, attn_implementation=attn, dtype=torch.float32).eval()
    config = DistillConfig(teacher=str(teacher_path), teacher_dtype="float32")
    teacher = load_teacher(config, "cpu", student.config._attn_implementation)
    assert teacher.config._attn_implementation == attn  # follows the student by default
    for model in (student, teacher):
        gaps = per_document_gap(model, tokenizer)
        assert max(gaps) < 1e-4, (type(model).__name__, gaps)


def test_a_padding_mask_leaks_across_documents(tiny_pair):
    """The leak the above guards against: a plain all-ones mask (what a run without a packing-aware
    attention gets) lets documents 2..n attend to earlier ones, so their logits change."""
    teacher_path, _ = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    gaps = per_document_gap(teacher, tokenizer, attention_mask=True)
    assert gaps[0] < 1e-4 and min(gaps[1:]) > 1e-3, gaps


def test_teacher_attention_can_be_set(tiny_pair):
    config = DistillConfig(teacher=str(tiny_pair[0]), teacher_dtype="float32", teacher_attn_implementation="eager")
    assert load_teacher(config, "cpu", "sdpa").config._attn_implementation == "eager"
