"""Span alignment on hand-checked strings, with the two tiny tokenizers: A (byte-level BPE, one
token per byte, ``Ġ`` = space) and B (SentencePiece-style BPE with its own merges, ``▁`` = space,
``<0xNN>`` byte fallback). Each case lists the tokens of both sides and the expected pairs as
(student's next token, teacher's next token): the two positions predict the text after the same
common boundary (``alignment.spans``)."""

from __future__ import annotations

import numpy as np
import pytest

from distill_plugin.alignment.collator import Aligner
from distill_plugin.alignment.spans import Region, aligned_pairs, char_to_byte_offsets
from distill_plugin.alignment.tokens import token_lengths
from distill_plugin.testing.tiny import build_sp_tokenizer, build_tokenizer

A, B = build_tokenizer(), build_sp_tokenizer()


def tokens(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def pairs(student, teacher, text, labels=None):
    """(student next token, teacher next token) of every aligned pair, the whole text one region."""
    ids = np.asarray(student(text, add_special_tokens=False)["input_ids"])
    labels = ids if labels is None else labels
    found = Aligner(student, teacher).align(ids, labels, text, [Region(0, len(text.encode()), 0)])
    s_next = student.convert_ids_to_tokens((ids[found.student_pos + 1]).tolist())
    t_next = teacher.convert_ids_to_tokens(found.teacher_ids[found.teacher_pos + 1].tolist())
    return list(zip(s_next, t_next))


def test_word_the_student_splits_and_the_teacher_keeps_whole():
    assert tokens(B, "the quick fox") == ["the", "▁qu", "ick", "▁", "fox"]
    assert tokens(A, "the quick fox") == list("the") + ["Ġ"] + list("quick") + ["Ġ"] + list("fox")
    # student A (bytes), teacher B: only B's boundaries are common; positions inside "the" get CE only
    assert pairs(A, B, "the quick fox") == [("Ġ", "▁qu"), ("i", "ick"), ("Ġ", "▁"), ("f", "fox")]
    # and the other way round: every B boundary is one of A's
    assert pairs(B, A, "the quick fox") == [("▁qu", "Ġ"), ("ick", "i"), ("▁", "Ġ"), ("fox", "f")]


def test_multibyte_character_boundary_inside_it_is_not_common():
    assert tokens(B, "héllo") == ["h", "<0xC3>", "<0xA9>", "l", "l", "o"]
    assert tokens(A, "héllo") == ["h", "Ã", "©", "l", "l", "o"]  # é = 0xC3 0xA9, offsets per character
    # boundary after 0xC3 (mid-character) is skipped; after é, q is the last teacher token ending there
    assert pairs(B, A, "héllo") == [("<0xC3>", "Ã"), ("l", "l"), ("l", "l"), ("o", "o")]


def test_emoji_four_bytes_one_boundary():
    assert tokens(B, "a😀b") == ["a", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "b"]
    assert pairs(B, A, "a😀b") == [("<0xF0>", "ð"), ("b", "b")]


def test_leading_spaces():
    assert tokens(B, "  two") == ["▁", "▁", "t", "w", "o"]
    assert pairs(B, A, "  two") == [("▁", "Ġ"), ("t", "t"), ("w", "w"), ("o", "o")]


def test_digits_merged_across_number_boundaries():
    assert tokens(B, "sum 47+38=85") == ["s", "u", "m", "▁4", "7", "+3", "8", "=8", "5"]
    assert pairs(A, B, "sum 47+38=85") == [("u", "u"), ("m", "m"), ("Ġ", "▁4"), ("7", "7"), ("+", "+3"),
                                          ("8", "8"), ("=", "=8"), ("5", "5")]


def test_special_tokens_on_one_side_plain_text_on_the_other():
    assert tokens(B, "x<|end|>y") == ["x", "<|end|>", "y"]  # B's special token; A spells it in bytes
    assert pairs(B, A, "x<|end|>y") == [("<|end|>", "<"), ("y", "y")]


def test_unsupervised_next_tokens_are_not_compared():
    ids = np.asarray(B("  two", add_special_tokens=False)["input_ids"])
    labels = ids.copy()
    labels[:3] = -100  # prompt: "▁", "▁", "t"
    assert pairs(B, A, "  two", labels) == [("w", "w"), ("o", "o")]


def test_chat_templates_differ_teacher_reads_its_own_and_answer_starts_mid_token():
    messages = [{"role": "user", "content": "What is 47+38?"},
                {"role": "assistant", "content": "<think>\n7+8=15\n</think>\n85"}]
    text = B.apply_chat_template(messages, tokenize=False)
    ids = np.asarray(B(text, add_special_tokens=False)["input_ids"])
    assert B.convert_ids_to_tokens(ids.tolist())[10:13] == ["<|assistant|>", "\n<", "think>\n"]  # '\n<' straddles
    answer_start = text.index("<think>")
    ends = np.cumsum(token_lengths(B)[ids])  # byte ends; the text before the answer is ASCII
    labels = np.where(ends > answer_start, ids, -100)  # tokens reaching into the answer are supervised
    aligner = Aligner(B, A)
    assert aligner.text(ids) == text  # the student's text, rebuilt from its token bytes
    teacher_text, regions = aligner.templates.teacher_text(text)
    assert teacher_text == A.apply_chat_template(messages, tokenize=False)  # A's ChatML markup
    assert [text.encode()[r.student_start:r.student_end] for r in regions] == [m["content"].encode() for m in messages]
    found = aligner(ids, labels)
    s_next = B.convert_ids_to_tokens(ids[found.student_pos + 1].tolist())
    t_next = A.convert_ids_to_tokens(found.teacher_ids[found.teacher_pos + 1].tolist())
    # No pair before the answer: B's first answer token '\n<' starts in the template's "\n". None
    # after '\n<' either: A keeps <think> whole (a special token), so the first common boundary is
    # after "<think>\n". None for the end-of-turn token (the templates spell it differently).
    assert list(zip(s_next, t_next)) == [("7", "7"), ("+8=1", "+"), ("5", "5"), ("\n</think>\n8", "Ċ"), ("5", "5")]


def test_unparseable_conversation_gets_no_alignment():
    aligner = Aligner(B, A)
    ids = np.asarray(B("no template here", add_special_tokens=False)["input_ids"])
    found = aligner(ids, ids)
    assert len(found.student_pos) == 0 and aligner.unmatched == 1


def test_aligned_pairs_on_offsets_by_hand():
    # student tokens end at 2, 5, 6, 9; teacher at 1, 2, 4, 6, 6, 9 (two tokens ending at 6)
    p, q = aligned_pairs([2, 5, 6, 9], [1, 2, 4, 6, 6, 9], np.ones(4, bool), [Region(0, 9, 0)])
    assert p.tolist() == [0, 2] and q.tolist() == [1, 4]
    # a region offset: student bytes [2, 9) are teacher bytes [12, 19)
    p, q = aligned_pairs([2, 5, 6, 9], [12, 15, 16, 19], np.ones(4, bool), [Region(2, 9, 12)])
    assert p.tolist() == [0, 1, 2] and q.tolist() == [0, 1, 2]


def test_char_to_byte_offsets():
    assert char_to_byte_offsets("aé😀b").tolist() == [0, 1, 3, 7, 8]


def test_slow_tokenizer_is_refused_naming_it():
    class Slow:
        name_or_path = "some/slow-tokenizer"

    with pytest.raises(ValueError, match="some/slow-tokenizer.*no offset mapping"):
        Aligner(B, Slow())


def test_an_extra_bos_before_the_template_is_tolerated():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "12"}]
    text = B.apply_chat_template(messages, tokenize=False)
    teacher_text, regions = Aligner(B, A).templates.teacher_text("<s>" + text)
    assert teacher_text == A.apply_chat_template(messages, tokenize=False)
    assert [("<s>" + text).encode()[r.student_start:r.student_end] for r in regions] == [b"hi", b"12"]


def test_text_stopping_inside_the_last_gap_or_content_still_matches():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "1234"}]
    text = B.apply_chat_template(messages, tokenize=False)
    templates = Aligner(B, A).templates
    _, regions = templates.teacher_text(text.rstrip("\n"))  # trailing newline of the template dropped
    assert text.encode()[regions[1].student_start:regions[1].student_end] == b"1234"
    cut = text[: text.index("1234") + 2]  # truncated at sequence_len inside the answer
    teacher_text, regions = templates.teacher_text(cut)
    assert teacher_text.endswith("<|im_start|>assistant\n12<|im_end|>\n")  # the teacher's closing markup
    assert cut.encode()[regions[1].student_start:regions[1].student_end] == b"12"
