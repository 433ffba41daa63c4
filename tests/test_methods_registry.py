"""The method registry (``distill_plugin.methods``): one module per method, glue that names none.

The glue (plugin, trainer, preflight, args) reaches every method through the assembly functions, so
adding a method edits none of it; these tests fail when a glue file reads a method's key again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from distill_plugin import methods
from distill_plugin.args import DistillConfig
from distill_plugin.methods import METHODS, LossFields

REPO = Path(__file__).resolve().parents[1]
GLUE = ("plugin.py", "trainer.py", "axolotl_trainer.py", "preflight.py", "args.py")


def method_keys() -> set[str]:
    return {name for m in METHODS for name in m.Fields.model_fields}


def code_names(path: Path) -> set[str]:
    """Attribute names and string constants of the file's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.add(node.value)
    return names


@pytest.mark.parametrize("name", GLUE)
def test_glue_names_no_methods_key(name):
    named = code_names(REPO / "distill_plugin" / name) & method_keys()
    assert not named, f"distill_plugin/{name} reads {sorted(named)}: move that logic into its method's module"


def test_the_scan_sees_a_key_read(tmp_path):
    """The scan above is not blind: a planted read of a method's key is found (and a docstring is not)."""
    planted = tmp_path / "glue.py"
    planted.write_text('"""Mentions teacher_logits in a docstring only."""\n\ndef f(config):\n    return config.teacher_logits\n')
    assert code_names(planted) & method_keys() == {"teacher_logits"}
    planted.write_text('"""Mentions teacher_logits in a docstring only."""\n')
    assert not code_names(planted) & method_keys()


def test_every_key_has_one_owner():
    """No two methods (nor a method and the shared loss fields) declare the same key: pydantic would
    keep one of them silently."""
    owners = [(name, m.name) for m in METHODS for name in m.Fields.model_fields]
    owners += [(name, "loss") for name in LossFields.model_fields]
    names = [name for name, _ in owners]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(names) == set(DistillConfig.model_fields)
    assert len({m.name for m in METHODS}) == len(METHODS)
    assert all(m.key in m.Fields.model_fields for m in METHODS)


@pytest.mark.parametrize("block, expected", [
    ({"teacher": "t"}, ["online"]),
    ({"teacher_logits": "store/"}, ["stored"]),
    ({"teacher_server": {"url": "http://127.0.0.1:1/v1", "model": "m"}}, ["served"]),
    ({"teacher": "t", "teacher_logits": "store/", "hidden_weight": 1.0}, ["online", "stored", "hidden"]),
    ({"teacher": "t", "on_policy_fraction": 0.5}, ["online", "on_policy"]),
    ({"teacher": "t", "attention_weight": 1.0}, ["online", "attention"]),
    ({"teacher": "t", "cross_tokenizer": "uld", "ce_weight": 1.0}, ["cross_tokenizer"]),  # it takes online's place
])
def test_active_methods(block, expected):
    assert [m.name for m in methods.active(DistillConfig(**block))] == expected


def test_terms_follow_the_active_methods():
    from distill_plugin.losses.terms import LogitTerms
    from distill_plugin.losses.uld import CrossTokenizerTerms

    assert [type(t) for t in DistillConfig(teacher="t").loss_terms()] == [LogitTerms]
    assert [type(t) for t in DistillConfig(teacher_logits="s/").loss_terms()] == [LogitTerms]
    hybrid = DistillConfig(teacher="t", cross_tokenizer="hybrid", ce_weight=1.0)
    assert [type(t) for t in hybrid.loss_terms()] == [CrossTokenizerTerms]
    with pytest.raises(ValueError, match="needs the student and teacher models"):
        DistillConfig(teacher="t", hidden_weight=1.0).loss_terms()


def test_trl_refuses_methods_that_need_the_plugins_collator():
    with pytest.raises(ValueError, match="distill.teacher_logits is supported through Axolotl"):
        methods.refuse_outside_axolotl(DistillConfig(teacher_logits="s/"))
    with pytest.raises(ValueError, match="distill.cross_tokenizer is supported through Axolotl"):
        methods.refuse_outside_axolotl(DistillConfig(teacher="t", cross_tokenizer="uld", ce_weight=1.0))
    methods.refuse_outside_axolotl(DistillConfig(teacher="t", on_policy_fraction=0.5))
