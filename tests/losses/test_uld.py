"""Cross-tokenizer losses (ULD, hybrid) against a plain float64 full-logit reference: values and
gradients, vocabularies of different sizes, unaligned rows, lm_head padding cut, top-k.

Tolerances: values rtol 1e-4; gradients rtol 1e-3 with an absolute floor of 1e-4·max|grad|.
"""

import pytest
import torch

from distill_plugin.alignment.tokens import VocabMap
from distill_plugin.losses import KDSettings
from distill_plugin.losses.uld import CrossTokenizerTerms, cross_tokenizer_loss, sorted_l1
from distill_plugin.signals import AlignedLogits, OutputHead, StudentRows

from reference import make_case, reference_cross_tokenizer

VS, VT = 50, 37  # the two vocabularies differ in size


def vocab_map(pairs=20, seed=3):
    g = torch.Generator().manual_seed(seed)
    s_ids = torch.randperm(VS, generator=g)[:pairs].sort().values
    t_ids = torch.randperm(VT, generator=g)[:pairs]
    s_rest, t_rest = torch.ones(VS, dtype=torch.bool), torch.ones(VT, dtype=torch.bool)
    s_rest[s_ids], t_rest[t_ids] = False, False
    return VocabMap(s_ids, t_ids, s_rest.nonzero().squeeze(1), t_rest.nonzero().squeeze(1))


def case(rows=31, aligned=19, seed=0):
    """Student rows [rows], teacher rows [aligned]; student row i ↔ teacher row index[i] (−1: none)."""
    h_s, w_s, h_t, w_t, targets = make_case(rows=rows, vs=VS, vt=VT, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.full((rows,), -1, dtype=torch.long)
    index[torch.randperm(rows, generator=g)[:aligned]] = torch.randperm(aligned, generator=g)
    return h_s, w_s, h_t[:aligned], w_t, targets, index


CASES = [("uld", "forward_kl", None), ("uld", "forward_kl", 7), ("hybrid", "forward_kl", None),
         ("hybrid", "jsd", 7), ("hybrid", "reverse_kl", None), ("hybrid", "tvd", None)]


@pytest.mark.parametrize("mode,div,top_k", CASES)
@pytest.mark.parametrize("temperature,chunk", [(1.0, 64), (2.0, 5)])
def test_values_and_grads_match_reference(mode, div, top_k, temperature, chunk):
    h_s, w_s, h_t, w_t, targets, index = case()
    s = KDSettings(divergence=div, temperature=temperature, kd_weight=0.7, ce_weight=0.3)
    vmap = vocab_map()
    signal = AlignedLogits(h_t, OutputHead(w_t), index, vocab_map=vmap)
    out = cross_tokenizer_loss(h_s, w_s, signal, targets, s, mode, top_k, normalizer=40, chunk_size=chunk)
    out.loss.backward()
    h2, w2 = h_s.detach().clone().requires_grad_(True), w_s.detach().clone().requires_grad_(True)
    ref, exact, uld, ce = reference_cross_tokenizer(h2, w2, h_t, w_t, index, targets, s, mode, top_k, vmap, 40)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    for ours, theirs in ((out.exact, exact), (out.uld, uld), (out.ce, ce)):
        torch.testing.assert_close(ours.double(), theirs.detach(), rtol=1e-4, atol=1e-6)
    assert out.uld > 0 and (out.exact > 0) == (mode == "hybrid")
    for ours, ref_grad in ((h_s.grad, h2.grad), (w_s.grad, w2.grad)):
        floor = 1e-4 * ref_grad.abs().max().item()
        torch.testing.assert_close(ours, ref_grad.float(), rtol=1e-3, atol=floor)


def test_padding_rows_of_both_heads_are_cut():
    h_s, w_s, h_t, w_t, targets, index = case()
    pad_s = torch.cat([w_s.detach(), torch.randn(6, w_s.shape[1])]).requires_grad_(True)  # lm_head padding rows
    pad_t = torch.cat([w_t, torch.randn(9, w_t.shape[1]) * 5])
    s = KDSettings(ce_weight=0.5)
    signal = AlignedLogits(h_t, OutputHead(pad_t), index, vocab_size=VT, student_vocab_size=VS)
    out = cross_tokenizer_loss(h_s, pad_s, signal, targets, s, "uld", normalizer=31)
    ref, *_ = reference_cross_tokenizer(h_s, w_s, h_t, w_t, index, targets, s, "uld", None, None, 31)
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-4, atol=1e-6)


def test_identical_distributions_give_zero_and_permutation_invariance():
    p = torch.softmax(torch.randn(4, 30, dtype=torch.float64), -1)
    assert sorted_l1(p, p).abs().max() == 0
    assert sorted_l1(p, p[:, torch.randperm(30)]).abs().max() == 0  # ULD ignores which token holds the mass
    wider = torch.cat([p, torch.zeros(4, 10, dtype=torch.float64)], 1)
    assert sorted_l1(p, wider).abs().max() == 0  # zero padding in probability space changes nothing


def test_term_components_and_every_weighted_component_has_gradient():
    h_s, w_s, h_t, w_t, targets, index = case()
    signal = AlignedLogits(h_t, OutputHead(w_t), index, vocab_map=vocab_map())
    student = StudentRows(h_s, targets, OutputHead(w_s))
    for mode, names in (("uld", ["uld", "ce"]), ("hybrid", ["exact", "uld", "ce"])):
        for weights in ((1.0, 0.0), (0.0, 1.0)):  # KD alone, CE alone: each moves the student
            term = CrossTokenizerTerms(KDSettings(kd_weight=weights[0], ce_weight=weights[1], temperature=2.0), mode)
            assert [c.name for c in term.components] == names
            assert term.components[0].weight == weights[0] * 4  # T² on the KD components
            h_s.grad = None
            out = term(student, signal)
            out.objective.backward()
            assert out.sums.shape == (len(names),) and h_s.grad.abs().sum() > 0


def test_no_aligned_rows_is_ce_only():
    h_s, w_s, h_t, w_t, targets, _ = case()
    none = torch.full((h_s.shape[0],), -1, dtype=torch.long)
    s = KDSettings(ce_weight=1.0)
    out = cross_tokenizer_loss(h_s, w_s, AlignedLogits(h_t, OutputHead(w_t), none), targets, s, "uld")
    out.loss.backward()
    assert out.uld == 0 and torch.isfinite(h_s.grad).all()
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(h_s @ w_s.t(), targets), rtol=1e-5, atol=1e-6)
