"""The uncertain-teacher source (distill_plugin/demo/source.py) and its scores: probabilities, the exact
KL, validity, entropy ratio and coverage against hand computations, and the model-side scorer's
batched positions against one prefix at a time."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from distill_plugin.demo.source import MarkovSource, entropy, exact_kl, sample_scores

# Two letters, two positions: after the start "a" or "b" evenly; after "a" always "a"; after "b", "a" 1/4, "b" 3/4.
HAND = {"^^": [0.5, 0.5], "^a": [1.0, 0.0], "^b": [0.25, 0.75]}


def hand_source() -> MarkovSource:
    return MarkovSource(alphabet="ab", length=2, table=HAND)


def test_probabilities_and_validity_by_hand():
    src = hand_source()
    assert src.log_prob("aa") == pytest.approx(math.log(0.5))
    assert src.log_prob("bb") == pytest.approx(math.log(0.5 * 0.75))
    assert src.log_prob("ab") == -math.inf
    assert [src.valid(y) for y in ("aa", "ba", "bb", "ab", "a", "aaa", "ac")] == [True, True, True, False, False, False, False]
    assert src.transitions("ba") == {("^^", "b"), ("^b", "a")}
    # H over the positions of "ba" and "aa": H(½,½) twice, then H(¼,¾) and H(1,0) = 0.
    h = (2 * math.log(2) - 0.25 * math.log(0.25) - 0.75 * math.log(0.75)) / 4
    assert src.entropy_rate(["ba", "aa"]) == pytest.approx(h)


def test_exact_kl_by_hand_with_zero_probabilities():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    log_q = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + math.log(1 / 0.5)) / 2
    assert exact_kl(p, log_q) == pytest.approx(expected)
    log_q[1, 1] = -np.inf  # a letter the source never writes may have Q = 0: 0·log 0 = 0
    assert math.isfinite(exact_kl(p, log_q))
    assert entropy(np.array([0.25, 0.75, 0.0])) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_sample_scores_by_hand():
    src = hand_source()
    samples = ["aa", "ab", "bb", "bb"]  # "ab" is invalid
    log_q = [math.log(0.4), math.log(0.1), math.log(0.2), math.log(0.2)]
    reference = ["aa", "ba", "bb"]  # reaches ^^→a, ^a→a, ^^→b, ^b→a, ^b→b: 5 transitions
    scores = sample_scores(src, samples, log_q, reference, entropy_rate=0.5)
    assert scores["validity"] == 0.75
    # the valid samples' mean −log Q(y) per letter, over the source's entropy rate
    assert scores["entropy_ratio"] == pytest.approx(-(math.log(0.4) + 2 * math.log(0.2)) / 3 / 2 / 0.5)
    assert scores["coverage"] == pytest.approx(4 / 5)  # ^^→a, ^a→a, ^^→b, ^b→b
    assert sample_scores(src, ["ab"], [0.0], reference, 0.5) == {"validity": 0.0, "entropy_ratio": None, "coverage": 0.0}


def test_draws_follow_the_table():
    src = MarkovSource(alphabet="abc", length=6, max_support=3, seed=3)
    rng = random.Random(0)
    counts = {}
    for _ in range(4000):
        x = src.sample(rng)
        assert src.valid(x)
        counts[x[:2]] = counts.get(x[:2], 0) + 1
    for prefix, n in counts.items():
        assert n / 4000 == pytest.approx(math.exp(src.log_prob(prefix)), abs=0.03)
    assert all(2 <= (p > 0).sum() <= 3 and p.sum() == pytest.approx(1) for p in src.table.values())
    assert src.rows(3, seed=5) == src.rows(3, seed=5) and src.rows(3, seed=5) != src.rows(3, seed=6)


def test_source_scores_match_one_prefix_at_a_time():
    """The batched, padded scorer gives each letter position the model's distribution after exactly
    that prefix: the exact and sequence KL equal a float64 recomputation from one forward pass per
    prefix (prompt rendered by the chat template, no padding)."""
    from distill_plugin.demo.core import encode
    from distill_plugin.demo.source_scores import letter_ids, source_scores
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    src = MarkovSource(alphabet="abcd", length=5, seed=1)
    rows = src.rows(6, seed=2)
    tok = build_tokenizer()
    model = build_model(None, tok, hidden_size=32, num_layers=1, seed=0).eval()
    ids = letter_ids(tok, src.alphabet)
    exact, seq = [], []
    with torch.no_grad():
        for row in rows:
            e, x = encode(tok, row), row["answer"]
            full = e.prompt_ids + e.target_ids
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1)
            for t in range(src.length):
                p = src.dist(x[:t])
                lq = logp[len(e.prompt_ids) + t - 1, ids].numpy()
                exact.append(float(np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - lq), 0))))
            answer_logq = sum(float(logp[len(e.prompt_ids) + j - 1, tok_id]) for j, tok_id in enumerate(e.target_ids))
            seq.append((src.log_prob(x) - answer_logq) / src.length)
    scores = source_scores(model, tok, src, rows, [r["answer"] for r in src.rows(8, seed=3)], samples=8)
    assert scores["kl_to_source"] == pytest.approx(np.mean(exact), rel=1e-5)
    assert scores["seq_kl_to_source"] == pytest.approx(np.mean(seq), rel=1e-5)
    assert 0 <= scores["validity"] <= 1 and scores["coverage"] >= 0


def test_exact_kl_is_none_when_letters_are_not_single_tokens():
    from distill_plugin.demo.source_scores import letter_ids
    from distill_plugin.testing.tiny import build_tokenizer

    assert letter_ids(build_tokenizer(), "ab") is not None
    assert letter_ids(build_tokenizer(), "ab\u00e9") is None  # é is two bytes: two tokens
