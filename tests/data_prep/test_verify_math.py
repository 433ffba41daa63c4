"""math-verify on tricky cases, gold-first semantics, and the hard-timeout pool."""

import time

import pytest

from data_prep import verify_math as vm
from data_prep.pool import TIMEOUT, HardTimeoutPool

CASES = [  # (gold, prediction, expected)
    ("42", "The answer is \\boxed{42}.", "correct"),
    ("\\frac{1}{2}", "so \\boxed{0.5}", "correct"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}", "correct"),
    ("1/2", "\\boxed{\\frac{1}{2}}", "correct"),
    ("\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}", "correct"),  # sets: order-free
    ("(0,1]", "\\boxed{(0, 1]}", "correct"),  # intervals
    ("(0,1]", "\\boxed{[0, 1]}", "wrong"),  # closed vs half-open: looks close, is wrong
    ("5\\text{ cm}", "\\boxed{5}", "correct"),  # units
    ("10", "\\boxed{10\\text{ meters}}", "correct"),
    ("\\text{B}", "\\boxed{B}", "correct"),  # \text{}
    ("7", "The final answer is **7**.", "correct"),  # bold markdown
    ("\\$18", "\\boxed{18}", "correct"),  # currency in the gold
    ("3.14159", "\\boxed{3.14}", "wrong"),
    ("100", "\\boxed{1000}", "wrong"),
    ("-2", "\\boxed{2}", "wrong"),
    ("\\frac{2}{3}", "\\boxed{\\frac{3}{2}}", "wrong"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", "correct"),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt2}{2}}", "correct"),
    ("x=3", "\\boxed{3}", "correct"),
    ("2,3", "\\boxed{3, 2}", "correct"),  # a bare list gold: must not parse as 2.3
    ("4", "", "no_answer"),
    ("4", "I do not know.", "no_answer"),
]


@pytest.mark.parametrize("gold,pred,expected", CASES)
def test_tricky_cases(gold, pred, expected):
    assert vm.check(gold, pred) == expected


def test_unparseable_gold_is_unverifiable_not_wrong():
    assert vm.check("see the proof above", "\\boxed{3}") == "unverifiable"
    assert vm.check("", "\\boxed{3}") == "unverifiable"
    assert vm.check("\\text{proof omitted}", "\\boxed{3}") == "unverifiable"


def test_gold_first_order():
    # math-verify treats the gold as the reference: a gold equation `x=3` accepts the value 3,
    # but a gold value 3 does not accept an arbitrary equation `y=3`.
    assert vm.check("x=3", "\\boxed{3}") == "correct"


def test_boxed_in_reasoning_is_not_the_answer():
    from data_prep.verify import _answer_text

    gen = {"text": "<think>\\boxed{5}\n", "reasoning": "\\boxed{5}", "content": "", "think_closed": False}
    assert vm.check("5", _answer_text(gen)) == "no_answer"


def test_pool_runs_checks_off_the_main_thread_in_order():
    items = [(g, p) for g, p, _ in CASES]
    with vm.make_pool(workers=2, timeout_s=10) as pool:
        got = list(pool.map(items))
    assert got == [e for _, _, e in CASES]


def test_pool_kills_and_replaces_stuck_worker():
    from hostile_fns import slow_square

    with HardTimeoutPool(slow_square, workers=2, timeout_s=1.0) as pool:
        t0 = time.monotonic()
        got = list(pool.map([1, -1, 2, -1, 3, 4]))
        took = time.monotonic() - t0
        assert got == [1, TIMEOUT, 4, TIMEOUT, 9, 16]
        assert pool.timeouts == 2 and took < 10
        assert list(pool.map([5])) == [25]  # replaced workers still serve
        with pytest.raises(RuntimeError, match="boom"):
            list(pool.map([999]))
