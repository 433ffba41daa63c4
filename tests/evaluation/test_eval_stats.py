"""pass@1 with a clustered (by prompt) 95% interval, and the fraction of a gap closed."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from scipy import stats as sps

from distill_plugin.evaluation import clustered_mean, gap_closed, pass_at_1


def test_pass_at_1_is_the_mean_of_per_prompt_rates():
    verdicts = [[True, True, True, True], [False, False, False, False], [True, False, None, True], [None, None]]
    est = pass_at_1(verdicts)
    rates = [1.0, 0.0, 2 / 3]  # the unverifiable sample is left out; the all-None prompt too
    assert est.clusters == 3 and est.samples == 11
    assert est.mean == pytest.approx(statistics.fmean(rates))
    half = sps.t.ppf(0.975, 2) * statistics.stdev(rates) / math.sqrt(3)
    assert (est.low, est.high) == pytest.approx((max(0, est.mean - half), min(1, est.mean + half)))
    assert est.low == 0 and est.high == 1  # 3 prompts: the interval is clipped to where a rate lies
    more = pass_at_1([[True, False]] * 5 + [[True, True]] * 5)  # rates 0.5 ×5, 1 ×5: inside [0, 1]
    half = sps.t.ppf(0.975, 9) * statistics.stdev([0.5] * 5 + [1.0] * 5) / math.sqrt(10)
    assert (more.low, more.high) == pytest.approx((0.75 - half, 0.75 + half)) and more.high < 1


def test_the_interval_is_over_prompts_not_samples():
    """Repeating each prompt's verdict n times adds no information: the interval stays the same."""
    once = pass_at_1([[True], [False], [True], [True], [False]])
    repeated = pass_at_1([[v] * 8 for v in (True, False, True, True, False)])
    assert (repeated.mean, repeated.low, repeated.high) == pytest.approx((once.mean, once.low, once.high))
    assert repeated.samples == 40 and repeated.clusters == 5


def test_coverage_close_to_95_percent_where_the_per_sample_interval_undercovers():
    """Prompts of varying difficulty, 4 samples each: the clustered interval covers the true pass@1
    about 95% of the time; a naive interval over all samples (as if independent) covers far less."""
    rng = random.Random(0)
    trials, prompts, n = 400, 40, 4
    clustered_hits = naive_hits = 0
    for _ in range(trials):
        difficulty = [rng.choice((0.05, 0.5, 0.95)) for _ in range(prompts)]
        truth = 0.5  # E[difficulty] over the three equally likely levels
        verdicts = [[rng.random() < d for _ in range(n)] for d in difficulty]
        est = pass_at_1(verdicts)
        clustered_hits += est.low <= truth <= est.high
        flat = [float(v) for row in verdicts for v in row]
        half = 1.96 * statistics.stdev(flat) / math.sqrt(len(flat))
        naive_hits += abs(statistics.fmean(flat) - truth) <= half
    assert 0.92 <= clustered_hits / trials <= 0.98
    assert naive_hits / trials < 0.85


def test_edge_cases():
    assert pass_at_1([]).mean is None
    single = pass_at_1([[True, False]])
    assert single.mean == 0.5 and single.low is None and single.clusters == 1
    same = pass_at_1([[True], [True], [True]])
    assert (same.low, same.mean, same.high) == (1.0, 1.0, 1.0)  # no spread over prompts: zero width
    assert clustered_mean([[1.0, 3.0], [5.0]], confidence=0.9).mean == 3.5


def test_gap_closed():
    assert gap_closed(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.9, 0.5, 0.9) == pytest.approx(1.0)
    assert gap_closed(0.4, 0.5, 0.9) == pytest.approx(-0.25)
    assert gap_closed(0.7, 0.9, 0.9) is None and gap_closed(0.7, 0.95, 0.9) is None
    assert gap_closed(None, 0.5, 0.9) is None
    # lower is better (KL to the teacher: the teacher's own is 0)
    assert gap_closed(0.2, 0.8, 0.0, higher_is_better=False) == pytest.approx(0.75)
