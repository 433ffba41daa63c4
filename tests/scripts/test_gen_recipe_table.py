"""The README's recipe table is generated from the recipes' headers: stale README → failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from distill_plugin.testing.recipe_header import read_header

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_recipe_table.py"


def check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True, text=True)


def test_readme_table_matches_the_headers():
    result = check(REPO / "README.md")
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_recipe_table.py --write"


def test_every_recipe_has_a_row_built_from_its_header():
    readme = (REPO / "README.md").read_text()
    for recipe in sorted((REPO / "recipes").rglob("*.yml")):
        header, name = read_header(recipe), recipe.relative_to(REPO).as_posix()
        row = next(line for line in readme.splitlines() if line.startswith(f"| [`{name}`]"))
        for key in ("recipe", "method", "student", "teacher", "sized-for"):
            assert header[key] in row, (name, key)
        assert header["twin-checks"] in row


def test_a_stale_table_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    header = read_header(REPO / "recipes" / "qlora_logit_kd.yml")
    readme.write_text((REPO / "README.md").read_text().replace(header["sized-for"], "1x16GB", 1))
    result = check(readme)
    assert result.returncode == 1 and "differs from the recipes' headers" in result.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--write", "--readme", str(readme)], check=True)
    assert check(readme).returncode == 0
