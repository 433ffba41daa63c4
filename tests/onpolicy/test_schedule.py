"""The per-step decision: seeded, reproducible, resumable, with the right frequency."""

from __future__ import annotations

import pytest

from distill_plugin.onpolicy.schedule import StepSchedule


def test_same_seed_same_decisions_other_seed_other_decisions():
    a, b, c = StepSchedule(0.5, seed=7), StepSchedule(0.5, seed=7), StepSchedule(0.5, seed=8)
    assert a.decisions(0, 200) == b.decisions(0, 200)
    assert a.decisions(0, 200) != c.decisions(0, 200)


def test_a_resumed_schedule_continues_the_same_sequence():
    """A fresh schedule asked from step k on (a resumed run) draws what the uninterrupted one drew."""
    whole = StepSchedule(0.3, seed=1).decisions(0, 100)
    resumed = StepSchedule(0.3, seed=1)
    assert resumed.decisions(40, 100) == whole[40:]
    assert resumed.count(100) == sum(whole)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_frequency_is_lambda(fraction):
    s = StepSchedule(fraction, seed=0)
    n = 4000
    # binomial: 4 standard deviations
    assert abs(s.count(n) / n - fraction) < 4 * (fraction * (1 - fraction) / n) ** 0.5


def test_extremes_and_incremental_count():
    assert not any(StepSchedule(0.0).decisions(0, 500))
    assert all(StepSchedule(1.0).decisions(0, 500))
    s = StepSchedule(0.5, seed=3)
    direct = [sum(s.decisions(0, k)) for k in range(60)]
    assert [s.count(k) for k in range(60)] == direct
    assert s.count(10) == direct[10]  # going back recounts
    assert s.fraction_so_far(0) == 0.0
    with pytest.raises(ValueError):
        StepSchedule(1.5)
