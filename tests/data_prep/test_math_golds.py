"""MATH-style golds graded as maths: our verdicts agree with real math-verify given the gold as LaTeX.

Each gold comes with a right and a wrong boxed prediction. ``test_math_verify_agrees`` checks the
table itself against math-verify (``verify(parse("$gold$"), parse(pred))``), so the expected
verdicts are math-verify's, not ours; ``test_check_grades_gold_as_maths`` checks
:func:`data_prep.verify_math.check` gives the same.
"""

import logging

import pytest

from data_prep import verify_math as vm

B = "\\boxed{%s}".__mod__
PM = "\\begin{pmatrix} %s \\end{pmatrix}".__mod__

GOLDS = [  # (gold as in MATH, right prediction, wrong prediction)
    # vectors and matrices (LaTeX environments)
    (PM("1 \\\\ 2"), B(PM("1 \\\\ 2")), B("2")),
    (PM("2 \\\\ -1 \\\\ 3"), B(PM("2 \\\\ -1 \\\\ 3")), B(PM("2 \\\\ 1 \\\\ 3"))),
    (PM("-1 & 2 \\\\ 0 & 3"), B(PM("-1 & 2 \\\\ 0 & 3")), B(PM("1 & 2 \\\\ 0 & 3"))),
    # intervals
    ("(-\\infty, 3]", B("(-\\infty,3]"), B("(-\\infty,3)")),
    ("[-2, 5)", B("[-2,5)"), B("(-2,5)")),
    ("(1, \\infty)", B("(1,\\infty)"), B("[1,\\infty)")),
    ("(-\\infty, -2) \\cup (3, \\infty)", B("(-\\infty,-2)\\cup(3,\\infty)"), B("(-2,3)")),
    ("x \\in [2, 7]", B("[2,7]"), B("[2,8]")),
    # tuples / ordered pairs
    ("(3, -1)", B("(3,-1)"), B("(-1,3)")),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", B("(3, \\frac{\\pi}{2})"), B("(3, \\pi)")),
    # sets and several solutions
    ("\\{1, 2\\}", B("\\{2,1\\}"), B("\\{1,3\\}")),
    ("1, -2", B("-2, 1"), B("1")),
    ("-2, 1", B("1, -2"), B("-2, 2")),
    ("3 \\pm \\sqrt{2}", B("3+\\sqrt2, 3-\\sqrt2"), B("3+\\sqrt2")),
    ("a = 2, b = 3", B("a=2, b=3"), B("a=3, b=2")),
    # units and \text{} words
    ("\\frac{\\sqrt{3}}{2} \\text{ units}", B("\\frac{\\sqrt{3}}{2}"), B("\\frac{1}{2}")),
    ("10\\text{ inches}", B("10"), B("12")),
    ("5\\text{ cm}^2", B("5"), B("25")),
    ("4 \\text{ hours}", B("4"), B("5")),
    ("7\\text{ square feet}", B("7"), B("49")),
    ("\\text{Monday}", B("\\text{Monday}"), B("\\text{Tuesday}")),
    ("\\text{odd}", B("\\text{odd}"), B("\\text{even}")),
    ("\\text{June 20}", B("\\text{June 20}"), B("\\text{June 21}")),
    ("\\text{(C)}", B("\\text{(C)}"), B("\\text{(D)}")),
    ("\\textbf{(A)}", B("A"), B("B")),
    ("\\text{(A), (C)}", B("\\text{(A), (C)}"), B("\\text{(A)}")),
    # degrees
    ("30^\\circ", B("30"), B("60^\\circ")),
    ("45^{\\circ}", B("45^\\circ"), B("135")),
    ("180^\\circ", B("180"), B("90^\\circ")),
    # percent
    ("50\\%", B("0.5"), B("5")),
    ("20\\%", B("20\\%"), B("25\\%")),
    # money
    ("\\$12.50", B("12.5"), B("12.05")),
    ("\\$1,000", B("1000"), B("100")),
    ("\\$ 32", B("\\$32"), B("\\$23")),
    # equations x = …
    ("x = 5", B("x=5"), B("x=4")),
    ("y = 2x + 3", B("y=2x+3"), B("y=3x+2")),
    # fractions and decimals
    ("\\frac{3}{4}", B("0.75"), B("0.7")),
    ("0.25", B("\\frac14"), B("\\frac13")),
    ("\\dfrac{5}{2}", B("2.5"), B("\\frac{2}{5}")),
    ("1.5", B("\\frac{3}{2}"), B("1.05")),
    ("-\\frac{1}{2}", B("-0.5"), B("0.5")),
    ("\\frac{1}{4}", B("\\frac{1}{4}"), B("4")),
    # integers, radicals, expressions
    ("12", B("12"), B("13")),
    ("0", B("0"), B("1")),
    ("2\\sqrt{3}", B("\\sqrt{12}"), B("3\\sqrt{2}")),
    ("11\\sqrt{2}", B("11\\sqrt2"), B("11")),
    ("\\sqrt{5}", B("\\sqrt5"), B("5")),
    ("\\pi", B("\\pi"), B("3")),
    ("6\\pi", B("6\\pi"), B("6")),
    ("2x^2-3", B("2x^2-3"), B("2x^2+3")),
    # infinity
    ("\\infty", B("\\infty"), B("-\\infty")),
]


def _math_verify(gold_latex: str, prediction: str) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return verify(parse(f"${gold_latex}$", parsing_timeout=None), parse(prediction, parsing_timeout=None),
                  timeout_seconds=None)


def test_table_covers_enough_golds():
    assert len(GOLDS) >= 40 and len({g for g, _, _ in GOLDS}) == len(GOLDS)


@pytest.mark.parametrize("gold,right,wrong", GOLDS)
def test_math_verify_agrees(gold, right, wrong):
    """The expected verdicts are math-verify's own, with the gold given as LaTeX maths."""
    assert _math_verify(gold, right) is True
    assert _math_verify(gold, wrong) is False


@pytest.mark.parametrize("gold,right,wrong", GOLDS)
def test_check_grades_gold_as_maths(gold, right, wrong):
    assert vm.check(gold, right) == "correct"
    assert vm.check(gold, wrong) == "wrong"


def test_prose_golds_stay_unverifiable():
    for gold in ["see the proof above", "\\text{proof omitted}", "The answer depends on n"]:
        assert vm.check(gold, B("3")) == "unverifiable", gold
    for gold in ["\\text{Monday}", PM("1 \\\\ 2"), "5\\text{ square feet}", "\\text{June 20}"]:
        assert not vm.is_prose(gold), gold


@pytest.mark.parametrize("gold,pred,expected", [
    ("2, 3", "\\boxed{2} and \\boxed{3}", "correct"),  # several boxes = several solutions
    ("3", "\\boxed{2} or \\boxed{3}", "wrong"),  # hedging between candidates is wrong
    ("3", "first \\boxed{3}, then \\boxed{2}", "wrong"),  # not "the last box wins"
    ("3", "\\boxed{3} so again \\boxed{3}", "correct"),  # repeating the same box is fine
])
def test_several_boxes_are_graded_together_as_a_set(gold, pred, expected):
    """Documented choice (docs/data_prep.md): every ``\\boxed{}`` of the final answer is graded,
    together, as one set (math-verify's behaviour)."""
    assert vm.check(gold, pred) == expected
    assert _math_verify(gold, pred) is (expected == "correct")


@pytest.mark.parametrize("gold,pred,expected", [
    ("50\\%", "\\boxed{50\\%}", "correct"),
    ("50\\%", "\\boxed{0.5}", "correct"),  # a percent is also its value / 100 ...
    ("50\\%", "\\boxed{50}", "correct"),  # ... and also the bare number
    ("0.5", "\\boxed{50\\%}", "correct"),
    ("50", "\\boxed{50\\%}", "correct"),
    ("50", "\\boxed{0.5}", "wrong"),  # no percent sign anywhere: numbers compare as numbers
    ("50\\%", "\\boxed{5}", "wrong"),
])
def test_percent_matches_the_number_and_the_fraction(gold, pred, expected):
    """Documented choice: a ``\\%`` on either side matches both ``x`` and ``x/100``."""
    assert vm.check(gold, pred) == expected
    assert _math_verify(gold, pred) is (expected == "correct")
