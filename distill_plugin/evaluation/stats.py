"""Accuracy statistics over prompts with several samples each, and the gap a student closed.

pass@1 with n samples per prompt (prompt i has m_i ≤ n checked samples, c_i of them correct):

    a_i      = c_i / m_i                         the prompt's pass rate
    pass@1   = (1/P) Σ_i a_i                     mean over the P prompts with ≥ 1 checked sample
    95% CI   = pass@1 ± t_{0.975, P−1} · s / √P  s: the sample standard deviation of the a_i,
                                                 clipped to [0, 1]

The interval is *clustered by prompt*: samples of one prompt are correlated (an easy prompt is
solved by all n, a hard one by none), so the unit of the interval is the prompt, never the n·P
samples; treating samples as independent would shrink the interval by up to √n. More samples per
prompt only reduce the within-prompt noise of each a_i. Unverifiable samples (``None``) are left
out of m_i; a prompt with none checked is left out of P. With P = 1 there is no interval (None);
with all a_i equal the interval has zero width (the spread over prompts is what it measures).

Fraction of the baseline→teacher gap closed (e.g. SFT → teacher):

    gap_closed = (score_student − score_baseline) / (score_teacher − score_baseline)

1 = the student matches the teacher, 0 = no better than the baseline; None when the teacher is no
better than the baseline (the gap is 0 or negative: the fraction means nothing). For a score where
lower is better (KL to the teacher, CE) pass ``higher_is_better=False``: the scores are negated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Estimate:
    """A mean over clusters (prompts) with its two-sided confidence interval."""

    mean: float | None
    low: float | None
    high: float | None
    clusters: int  # P, the prompts that entered the mean
    samples: int  # Σ m_i, the checked samples
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def clustered_mean(per_cluster: Sequence[Sequence[float]], confidence: float = 0.95) -> Estimate:
    """Mean of the per-cluster means, Student-t interval over clusters (see the module docstring)."""
    from scipy.stats import t

    groups = [list(g) for g in per_cluster if len(g)]
    means = [math.fsum(g) / len(g) for g in groups]
    samples = sum(len(g) for g in groups)
    if not means:
        return Estimate(None, None, None, 0, 0, confidence)
    mean = math.fsum(means) / len(means)
    if len(means) < 2:
        return Estimate(mean, None, None, 1, samples, confidence)
    sd = math.sqrt(math.fsum((m - mean) ** 2 for m in means) / (len(means) - 1))
    half = float(t.ppf(0.5 + confidence / 2, len(means) - 1)) * sd / math.sqrt(len(means))
    return Estimate(mean, mean - half, mean + half, len(means), samples, confidence)


def pass_at_1(correct: Sequence[Sequence[bool | None]], confidence: float = 0.95) -> Estimate:
    """pass@1 from per-prompt sample verdicts (True / False / None = unverifiable, left out); the
    interval is clipped to [0, 1], where a rate lies (the t-interval can cross it near 0 or 1)."""
    est = clustered_mean([[float(c) for c in prompt if c is not None] for prompt in correct], confidence)
    if est.low is None:
        return est
    return replace(est, low=max(0.0, est.low), high=min(1.0, est.high))


def gap_closed(student: float | None, baseline: float | None, teacher: float | None,
               higher_is_better: bool = True) -> float | None:
    """(student − baseline) / (teacher − baseline); None when undefined (see the module docstring)."""
    if student is None or baseline is None or teacher is None:
        return None
    sign = 1.0 if higher_is_better else -1.0
    gap = sign * (teacher - baseline)
    return sign * (student - baseline) / gap + 0.0 if gap > 0 else None  # + 0.0: no -0.0
