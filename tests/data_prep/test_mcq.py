import pytest

from data_prep.verify_mcq import check, extract_letter, gold_letter


@pytest.mark.parametrize("text,letter", [
    ("so the answer is (C).", "C"),
    ("Answer: B", "B"),
    ("\\boxed{D}", "D"),
    ("\\boxed{\\text{A}}", "A"),
    ("I pick **E**", "E"),
    ("A is tempting, but the answer is B", "B"),
    ("no idea", None),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


def test_gold_forms_and_check():
    assert gold_letter("c") == "C" and gold_letter(1) == "B"
    assert gold_letter("Paris", ["London", "Paris"]) == "B"
    assert check("B", "The answer is B") == "correct"
    assert check("B", "The answer is A") == "wrong"
    assert check("B", "hmm") == "no_answer"
    assert check("a long free-form answer", "The answer is A") == "unverifiable"
