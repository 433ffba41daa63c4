"""Which optimizer steps train on generated completions.

GKD mixes data: with probability λ (``on_policy_fraction``) a step's completions are sampled from
the student, otherwise they come from the data (or, with ``seq_kd``, from the teacher). The draw
is made **per optimizer step**, never per micro-batch, so every micro-batch of one gradient-
accumulation step uses the same kind of completion and the step stays one objective.

The draw for step k is a counter-based random number: ``u_k = Uniform(SeedSequence([seed, k]))``,
on-policy iff ``u_k < λ``. That is a seeded generator whose whole state is (seed, k): the step
counter is already saved in every checkpoint (``TrainerState.global_step``), so a resumed run makes
exactly the draws the uninterrupted run would have made, every process makes the same draw without
communicating, and the count of on-policy steps so far (the logged ``on_policy``) can be recomputed
at any step instead of being carried as extra checkpoint state.
"""

from __future__ import annotations

import numpy as np

# Separates this stream from other users of the run's seed (data order, dropout, sampling).
STREAM = 0x6B64


class StepSchedule:
    """``on_policy(k)``: does optimizer step k (0-based) sample from the student?"""

    def __init__(self, fraction: float, seed: int = 0):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"on_policy_fraction must be in [0, 1], got {fraction}")
        self.fraction, self.seed = float(fraction), int(seed)
        self._counted = (0, 0)  # (steps, on-policy steps among them) of the last count

    def draw(self, step: int) -> float:
        """u_k ∈ [0, 1) for step k, a pure function of (seed, k)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return float(np.random.default_rng([STREAM, self.seed, int(step)]).random())

    def on_policy(self, step: int) -> bool:
        # λ = 0 and λ = 1 are exact: no draw can change them.
        return self.fraction >= 1.0 or (self.fraction > 0.0 and self.draw(step) < self.fraction)

    def decisions(self, start: int, stop: int) -> list[bool]:
        return [self.on_policy(k) for k in range(start, stop)]

    def count(self, steps: int) -> int:
        """On-policy steps among steps 0..steps-1. Extends the last count it made, so logging at
        every step costs one draw per step, not a recount from 0."""
        done, total = self._counted if self._counted[0] <= steps else (0, 0)
        total += sum(self.decisions(done, steps))
        self._counted = (steps, total)
        return total

    def fraction_so_far(self, steps: int) -> float:
        return self.count(steps) / steps if steps > 0 else 0.0
