"""The recipe table of docs/recipes.md is generated from the recipes' headers: stale page → failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from distill_plugin.testing.recipe_header import read_header

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_recipe_table.py"
DOC = REPO / "docs" / "recipes.md"


def check(doc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)], capture_output=True, text=True)


def test_doc_table_matches_the_headers():
    result = check(DOC)
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_recipe_table.py --write"


def test_every_recipe_has_a_row_built_from_its_header():
    doc = DOC.read_text()
    for recipe in sorted((REPO / "recipes").rglob("*.yml")):
        header, name = read_header(recipe), recipe.relative_to(REPO).as_posix()
        row = next(line for line in doc.splitlines() if line.startswith(f"| [`{name}`](../{name})"))
        for key in ("recipe", "method", "student", "teacher", "sized-for"):
            assert header[key] in row, (name, key)
        assert header["twin-checks"] in row


def test_a_stale_table_fails_the_check(tmp_path):
    doc = tmp_path / "recipes.md"
    header = read_header(REPO / "recipes" / "qlora_logit_kd.yml")
    doc.write_text(DOC.read_text().replace(header["sized-for"], "1x16GB", 1))
    result = check(doc)
    assert result.returncode == 1 and "differs from the recipes' headers" in result.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", "--doc", str(doc)], check=True)
    assert check(doc).returncode == 0
