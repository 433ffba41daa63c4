"""The README's `distill:` table is generated from the schema: stale README → failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill_plugin.args import DistillConfig
from distill_plugin.losses.divergences import DIVERGENCES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_config_table.py"


def check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
                          capture_output=True, text=True)


def test_every_distill_field_has_a_description():
    missing = [name for name, field in DistillConfig.model_fields.items() if not field.description]
    assert not missing


def test_readme_table_matches_the_schema():
    result = check(REPO / "README.md")
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_config_table.py --write"


def test_a_stale_table_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text().replace("Skew-KL λ (DistiLLM).", "Skew-KL λ."))
    result = check(readme)
    assert result.returncode == 1 and "differs from the schema" in result.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", "--readme", str(readme)], check=True)
    assert check(readme).returncode == 0


def test_divergence_choices_come_from_the_registry():
    """Adding a divergence is one registered function: the config accepts exactly the registry."""
    for name in DIVERGENCES:
        assert DistillConfig(teacher="t", divergence=name).divergence == name
    with pytest.raises(ValueError, match="divergence"):
        DistillConfig(teacher="t", divergence="kl")
    assert "`" + "` \\| `".join(DIVERGENCES) + "`" in (REPO / "README.md").read_text()
