"""Layer maps: the documented examples, the edges, and errors that name `hidden_layers`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill_plugin.args import DistillConfig
from distill_plugin.hidden.layer_map import resolve


@pytest.mark.parametrize(
    "spec,student,teacher,expected",
    [
        ("uniform:4", 28, 64, ((7, 16), (14, 32), (21, 48), (28, 64))),  # the docstring's example
        ("uniform:1", 2, 4, ((2, 4),)),  # one pair: the final hidden states
        ("uniform:3", 4, 6, ((1, 2), (2, 4), (4, 6))),  # ⌊j·L/N⌋
        ("uniform:2", 2, 2, ((1, 1), (2, 2))),
        ("last:2", 28, 64, ((27, 63), (28, 64))),
        ("last:1", 2, 4, ((2, 4),)),
        ([[0, 0], [2, 4]], 2, 4, ((0, 0), (2, 4))),  # 0 = embeddings, L = final
    ],
)
def test_maps(spec, student, teacher, expected):
    assert resolve(spec, student, teacher) == expected


@pytest.mark.parametrize(
    "spec,student,teacher,needle",
    [
        ("uniform:3", 2, 4, r"uniform:3 asks for 3 pairs but the student has 2"),
        ("last:5", 4, 4, r"last:5 asks for 5 pairs.*N must be at most 4"),
        ([[3, 1]], 2, 4, r"pair \[3, 1\] is out of range"),
        ([[1, 5]], 2, 4, r"pair \[1, 5\] is out of range.*4 for the teacher"),
    ],
)
def test_map_errors_at_startup_name_the_key(spec, student, teacher, needle):
    with pytest.raises(ValueError, match=r"distill\.hidden_layers: " + needle):
        resolve(spec, student, teacher)


@pytest.mark.parametrize("spec", ["uniform:0", "uniform", "every:2", "uniform:-1", [[1, -2]], [], [[1, 1], [1, 1]]])
def test_bad_spec_is_a_config_error_naming_the_key(spec):
    with pytest.raises(ValidationError, match="hidden_layers"):
        DistillConfig(teacher="t", hidden_weight=1.0, hidden_layers=spec)


def test_hidden_kd_with_offline_logits_needs_the_online_teacher():
    with pytest.raises(ValidationError, match="`hidden_weight` > 0 needs the online `teacher`"):
        DistillConfig(teacher_logits="store", hidden_weight=1.0)
    both = DistillConfig(teacher="t", teacher_logits="store", hidden_weight=1.0)
    assert both.teacher and both.teacher_logits
    with pytest.raises(ValidationError, match="exactly one of"):  # both without hidden KD: still ambiguous
        DistillConfig(teacher="t", teacher_logits="store")
