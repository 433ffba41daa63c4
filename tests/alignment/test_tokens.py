"""Token bytes of both tokenizer families and the vocabulary agreement map of the tiny pair."""

from __future__ import annotations

from distill_plugin.alignment.tokens import token_bytes, vocab_agreement
from distill_plugin.testing.tiny import SPECIAL_TOKENS, SP_SPECIAL_TOKENS, build_sp_tokenizer, build_tokenizer

A, B = build_tokenizer(), build_sp_tokenizer()


def test_token_bytes_follow_each_convention():
    a, b = token_bytes(A), token_bytes(B)
    va, vb = A.get_vocab(), B.get_vocab()
    assert a[va["Ġ"]] == b" " and a[va["Ã"]] == b"\xc3" and a[va["<|im_start|>"]] == b"<|im_start|>"
    assert b[vb["▁qu"]] == b" qu" and b[vb["<0xC3>"]] == b"\xc3" and b[vb["<0x41>"]] == b"A" and b[vb["<|end|>"]] == b"<|end|>"
    # concatenated token bytes are the text, for every kind of character
    text = " the quick 😀 héllo 47+38\n"
    for tok, table in ((A, a), (B, b)):
        assert b"".join(table[i] for i in tok(text, add_special_tokens=False)["input_ids"]) == text.encode()


def test_vocab_agreement_pairs_equal_strings_one_to_one():
    m = vocab_agreement(B, A)  # student B, teacher A
    a, b = token_bytes(A), token_bytes(B)
    assert all(b[s] == a[t] for s, t in zip(m.student.tolist(), m.teacher.tolist()))
    assert len(set(m.student.tolist())) == len(m.student) and len(set(m.teacher.tolist())) == len(m.teacher)
    pairs = dict(zip(m.student.tolist(), m.teacher.tolist()))
    vb, va = B.get_vocab(), A.get_vocab()
    assert pairs[vb["a"]] == va["a"]  # the regular token "a", not its byte-fallback spelling <0x61>
    assert vb["<0x61>"] not in pairs
    assert pairs[vb["<0xC3>"]] == va["Ã"]  # a lone high byte: B only spells it as a fallback token
    assert vb["▁qu"] not in pairs  # A has no " qu" token
    # A's 256 byte tokens all have a partner; no special token agrees (different chat markup)
    assert len(m.student) == 256
    assert set(m.teacher_other.tolist()) == {va[t] for t in SPECIAL_TOKENS}
    assert {vb[t] for t in SP_SPECIAL_TOKENS} <= set(m.student_other.tolist())
    assert len(m.student) + len(m.student_other) == len(B) and len(m.teacher) + len(m.teacher_other) == len(A)


def test_map_is_cached():
    assert vocab_agreement(B, A) is vocab_agreement(B, A)
