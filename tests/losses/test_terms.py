"""Loss terms: the logit term returns per-token sums that match the float64 reference for both
teacher signal kinds, and the term list checks its signals and names up front."""

from __future__ import annotations

import pytest
import torch

from distill_plugin.losses import KDSettings, LogitTerms, run_terms
from distill_plugin.losses.terms import check_signals, component_names
from distill_plugin.signals import DenseLogits, OutputHead, StudentRows, TopKLogprobs

from reference import make_case, reference_loss, reference_topk, stored_topk

SETTINGS = KDSettings(divergence="jsd", temperature=2.0, kd_weight=0.6, ce_weight=0.4)


@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_logit_terms_return_sums_that_match_the_reference(kind):
    h_s, w_s, h_t, w_t, targets = make_case(rows=23)
    student = StudentRows(h_s, targets, OutputHead(w_s))
    if kind == "dense":
        signal = DenseLogits(h_t, OutputHead(w_t))
        ref = reference_loss(h_s, w_s, h_t, w_t, targets, SETTINGS, 1.0, w_s.shape[0])
    else:
        ids, lps = stored_topk(h_t, w_t, 8, 1.5)
        signal = TopKLogprobs(ids, lps, capture_temperature=1.5)
        ref = reference_topk(h_s, w_s, ids, lps, targets, SETTINGS, "bucket", 1.5, 1.0)
    term = LogitTerms(SETTINGS, chunk_size=5)
    out = run_terms([term], student, {type(signal): signal})
    assert component_names([term]) == ("kd", "ce")
    assert [c.weight for c in term.components] == [pytest.approx(0.6 * 4), 0.4]
    torch.testing.assert_close(out.objective.double(), ref[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.sums.double(), torch.stack(ref[1:]), rtol=1e-4, atol=1e-6)
    # the objective is the weighted sum of the components
    torch.testing.assert_close(out.objective, sum(c.weight * s for c, s in zip(term.components, out.sums)))


def test_a_term_without_its_signal_is_refused_at_setup():
    with pytest.raises(ValueError, match="LogitTerms \\(kd, ce\\) needs one of"):
        check_signals([LogitTerms()], produced=())
    check_signals([LogitTerms()], produced=(TopKLogprobs,))


def test_component_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        component_names([LogitTerms(), LogitTerms()])
