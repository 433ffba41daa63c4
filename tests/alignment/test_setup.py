"""Cross-tokenizer config keys and start-up checks (Axolotl's loader + the plugin's pre-data hook)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill_plugin.args import DistillConfig
from test_preflight import preflight, recipe


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"teacher_tokenizer": "t"}, "distill.teacher_tokenizer has no effect with cross_tokenizer 'off'"),
        ({"uld_top_k": 8}, "distill.uld_top_k has no effect with cross_tokenizer 'off'"),
        ({"cross_tokenizer": "uld", "divergence": "jsd"}, "distill.divergence has no effect with cross_tokenizer 'uld'"),
        ({"cross_tokenizer": "uld", "check_tokenizer": False}, "distill.check_tokenizer has no effect"),
        ({"cross_tokenizer": "uld", "hidden_weight": 1.0}, "hidden-state KD"),
        ({"cross_tokenizer": "hybrid", "teacher": None, "teacher_logits": "x/"}, "needs the online `teacher`"),
        ({"cross_tokenizer": "wasserstein"}, "cross_tokenizer"),
        ({"cross_tokenizer": "uld", "uld_top_k": 0}, "uld_top_k"),
        ({"uld_weight": 0.5}, "distill.uld_weight has no effect with cross_tokenizer 'off'"),
        ({"cross_tokenizer": "uld", "uld_weight": 0.5}, "uld_weight weighs ULD inside 'hybrid'"),
        ({"cross_tokenizer": "hybrid", "uld_weight": 0, "uld_top_k": 8}, "uld_top_k has no effect with uld_weight 0"),
        ({"cross_tokenizer": "hybrid", "uld_weight": -1}, "uld_weight"),
    ],
)
def test_settings_without_effect_are_refused(fields, needle):
    with pytest.raises(ValidationError, match=needle):
        DistillConfig.model_validate({"teacher": "t", **fields})


def test_terms_follow_the_mode():
    from distill_plugin.losses.uld import CrossTokenizerTerms

    (term,) = DistillConfig(teacher="t", cross_tokenizer="hybrid", divergence="jsd", uld_top_k=5).loss_terms()
    assert isinstance(term, CrossTokenizerTerms) and term.mode == "hybrid" and term.top_k == 5
    assert [c.name for c in term.components] == ["next_byte", "uld", "ce"] and term.uld_weight == 1.0
    (term,) = DistillConfig(teacher="t", cross_tokenizer="hybrid", uld_weight=0).loss_terms()
    assert [c.name for c in term.components] == ["next_byte", "ce"] and term.uld_weight == 0


def test_preflight_cross_pair(tmp_path, cross_pair, arithmetic_data, capsys):
    teacher, student = cross_pair
    base = dict(base_model=str(student), sample_packing=False)  # the twin of a packing recipe
    # without cross_tokenizer the same-tokenizer check refuses the pair ...
    line = preflight(recipe(tmp_path, cross_pair, arithmetic_data, **base), capsys)
    assert "distill.teacher: tokenizer of" in line
    # ... with it, the pair passes
    ok = recipe(tmp_path, cross_pair, arithmetic_data, **base, distill={"teacher": str(teacher), "cross_tokenizer": "uld"})
    assert preflight(ok, capsys) is None
    packed = recipe(tmp_path, cross_pair, arithmetic_data, **{**base, "sample_packing": True},
                    distill={"teacher": str(teacher), "cross_tokenizer": "uld"})
    assert "does not support `sample_packing: true`" in preflight(packed, capsys)
    missing = recipe(tmp_path, cross_pair, arithmetic_data, **base,
                     distill={"teacher": str(teacher), "cross_tokenizer": "hybrid", "teacher_tokenizer": str(tmp_path / "none")})
    assert preflight(missing, capsys).startswith("distill_plugin: error: distill.teacher_tokenizer:")


def test_check_pair_line(tmp_path):
    """The line the plugin logs once instead of the same-tokenizer refusal."""
    from types import SimpleNamespace

    from distill_plugin.alignment.setup import check_pair
    from distill_plugin.testing.tiny import build_sp_tokenizer, build_tokenizer

    build_tokenizer(tmp_path / "teacher_tok")
    config = SimpleNamespace(teacher_tokenizer=None, teacher=str(tmp_path / "teacher_tok"), teacher_revision=None,
                             cross_tokenizer="uld")
    assert check_pair(build_sp_tokenizer(), config) == (
        "tokenizers differ (261 vs 519 tokens), alignment in use (cross_tokenizer uld, teacher uses its own chat template)")
