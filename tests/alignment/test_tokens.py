"""Token bytes of both tokenizer families and the first-byte classes of the tiny pair."""

from __future__ import annotations

from distill_plugin.alignment.tokens import OTHER, next_byte_classes, token_bytes
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


def test_next_byte_classes_are_each_ids_first_byte():
    m = next_byte_classes(B, A)  # student B, teacher A
    va, vb = A.get_vocab(), B.get_vocab()
    assert m.student.shape == (len(B),) and m.teacher.shape == (len(A),)
    assert m.teacher[va["5"]] == m.student[vb["5"]] == m.student[vb["5;"]] == ord("5")
    assert m.student[vb["▁qu"]] == m.teacher[va["Ġ"]] == ord(" ")  # ▁ and Ġ both write a space
    assert m.student[vb["<0xC3>"]] == m.teacher[va["Ã"]] == 0xC3  # a lone high byte, fallback spelling
    assert m.teacher[va["<|im_start|>"]] == m.student[vb["<|end|>"]] == ord("<")  # specials: their literal text
    # both sides cover every byte (byte-level / byte fallback), so no byte class is one-sided
    assert set(m.student.tolist()) == set(m.teacher.tolist()) == set(range(256))


def test_a_byte_only_one_side_starts_with_joins_other():
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3}  # no byte fallback: starts with a or b only
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    narrow = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))
    m = next_byte_classes(narrow, A)
    assert m.student.tolist() == [ord("<"), ord("a"), ord("b"), ord("a")]
    assert m.teacher[A.get_vocab()["c"]] == OTHER and m.teacher[A.get_vocab()["a"]] == ord("a")


def test_classes_are_cached():
    assert next_byte_classes(B, A) is next_byte_classes(B, A)
