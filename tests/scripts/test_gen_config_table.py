"""The `distill:` table of docs/configuration.md is generated from the schema: stale page → failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill_plugin.args import DistillConfig
from distill_plugin.losses.divergences import DIVERGENCES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_config_table.py"
DOC = REPO / "docs" / "configuration.md"


def check(doc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)],
                          capture_output=True, text=True)


def test_every_distill_field_has_a_description():
    missing = [name for name, field in DistillConfig.model_fields.items() if not field.description]
    assert not missing


def test_doc_table_matches_the_schema():
    result = check(DOC)
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_config_table.py --write"


def test_a_stale_table_fails_the_check(tmp_path):
    doc = tmp_path / "configuration.md"
    doc.write_text(DOC.read_text().replace("Skew-KL λ (DistiLLM).", "Skew-KL λ."))
    result = check(doc)
    assert result.returncode == 1 and "differs from the schema" in result.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", "--doc", str(doc)], check=True)
    assert check(doc).returncode == 0


def test_default_page_is_docs_configuration(tmp_path):
    """Without --doc the script checks docs/configuration.md."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_divergence_choices_come_from_the_registry():
    """Adding a divergence is one registered function: the config accepts exactly the registry."""
    for name in DIVERGENCES:
        assert DistillConfig(teacher="t", divergence=name).divergence == name
    with pytest.raises(ValueError, match="divergence"):
        DistillConfig(teacher="t", divergence="kl")
    assert "`" + "` \\| `".join(DIVERGENCES) + "`" in DOC.read_text()
