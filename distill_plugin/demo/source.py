"""A text source whose next-symbol distribution is known exactly: the uncertain-teacher task.

Every row asks for a sequence; the answer is ``length`` letters of ``alphabet`` drawn from an
order-2 Markov chain, then the end of the turn:

    x_t ~ P(· | x_{t−2}, x_{t−1}),   x_{−2} = x_{−1} = ^ (the start symbol)

Each context allows a random subset of ``min_support``–``max_support`` letters (the others have
probability 0) with Dirichlet(1) weights, all fixed by ``seed``. A right answer is a distribution,
not one string: a label is one draw from it, and a teacher trained on many draws can say more than
any single label.

Metrics (pure functions of probabilities; ``source_scores.py`` gets them from a model). Over a
held-out sequence x of the source, at its ``length`` letter positions t (row t predicts x_t from
x_<t; the end-of-turn position is not counted):

    exact KL          (1/L) Σ_t Σ_v P(v|c_t) [log P(v|c_t) − log Q(v|x_<t)]   Q: the model, its full vocabulary
    sequence KL       (1/L) [log P(x) − log Q(x)]                             one tokenisation of x: any vocabulary
    entropy rate      H = (1/L) Σ_t H(P(·|c_t)), averaged over held-out sequences

and over the model's own samples y (temperature 1):

    validity          the fraction of y that are ``length`` letters, every transition allowed (P > 0)
    entropy ratio     (−(1/L) log Q(y), the whole answer with its end, over the valid y) / H: below 1,
                      the model is sharper than the source
    coverage          distinct (context, letter) transitions in the valid y / the same count in as
                      many of the source's own samples: below 1, the model leaves paths out
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

START = "^"
PROMPT = "Write a sequence."


@dataclass(frozen=True)
class MarkovSource:
    alphabet: str = "abcdefgh"
    length: int = 24
    min_support: int = 2
    max_support: int = 4
    seed: int = 0
    # context (two symbols) -> probabilities over the alphabet; None: drawn from ``seed`` as above
    table: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.table is not None:
            object.__setattr__(self, "table", {c: np.asarray(p, dtype=float) for c, p in self.table.items()})
            return
        rng = np.random.default_rng(self.seed)
        k, table = len(self.alphabet), {}
        for c in [START + START] + [START + b for b in self.alphabet] + [a + b for a in self.alphabet for b in self.alphabet]:
            support = rng.choice(k, size=int(rng.integers(self.min_support, self.max_support + 1)), replace=False)
            p = np.zeros(k)
            p[support] = rng.dirichlet(np.ones(len(support)))
            table[c] = p
        object.__setattr__(self, "table", table)

    def dist(self, prefix: str) -> np.ndarray:
        """P(· | the last two symbols of ``START*2 + prefix``) over the alphabet."""
        return self.table[(START + START + prefix)[-2:]]

    def sample(self, rng: random.Random) -> str:
        out = ""
        for _ in range(self.length):
            out += rng.choices(self.alphabet, weights=self.dist(out).tolist())[0]
        return out

    def log_prob(self, x: str) -> float:
        """log P(x) (−inf for a sequence the source cannot write)."""
        total = 0.0
        for t, ch in enumerate(x):
            p = self.dist(x[:t])[self.alphabet.index(ch)]
            total += math.log(p) if p > 0 else -math.inf
        return total

    def valid(self, y: str) -> bool:
        return (len(y) == self.length and all(ch in self.alphabet for ch in y)
                and self.log_prob(y) > -math.inf)

    def transitions(self, y: str) -> set[tuple[str, str]]:
        """The (context, letter) pairs ``y`` uses."""
        padded = START + START + y
        return {(padded[t:t + 2], padded[t + 2]) for t in range(len(y))}

    def entropy_rate(self, xs: list[str]) -> float:
        """H: the exact next-letter entropy, averaged over the letter positions of ``xs``."""
        return float(np.mean([entropy(self.dist(x[:t])) for x in xs for t in range(len(x))]))

    def rows(self, n: int, seed: int, prefix: str = "seq") -> list[dict]:
        """``n`` chat rows (``messages``, ``id``, ``answer``), sequences drawn with ``seed``."""
        rng = random.Random(seed)
        out = []
        for i in range(n):
            x = self.sample(rng)
            out.append({"id": f"{prefix}-{seed}-{i}", "answer": x, "messages": [
                {"role": "user", "content": PROMPT}, {"role": "assistant", "content": x}]})
        return out


def entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def exact_kl(p: np.ndarray, log_q: np.ndarray) -> float:
    """Mean over rows of Σ_v p (log p − log q): ``p`` [n, K] the source's probabilities, ``log_q``
    [n, K] the model's log-probabilities of the same letters (normalised over its whole vocabulary)."""
    safe = p > 0  # 0·log 0 = 0, also where log q = −inf
    terms = np.where(safe, p * (np.log(np.where(safe, p, 1.0)) - np.where(safe, log_q, 0.0)), 0.0)
    return float(terms.sum(axis=1).mean())


def sample_scores(source: MarkovSource, samples: list[str], sample_log_q: list[float], reference: list[str],
                  entropy_rate: float) -> dict:
    """Validity, entropy ratio and coverage of a model's samples (module docstring). ``sample_log_q``:
    each sample's log Q(y), the whole answer with its end; ``reference``: as many samples of the source."""
    valid = [i for i, y in enumerate(samples) if source.valid(y)]
    ratio = None
    if valid:
        ratio = -float(np.mean([sample_log_q[i] for i in valid])) / source.length / entropy_rate
    covered = set().union(set(), *(source.transitions(samples[i]) for i in valid))
    reached = set().union(*(source.transitions(x) for x in reference))
    return {"validity": len(valid) / len(samples), "entropy_ratio": ratio, "coverage": len(covered) / len(reached)}
