"""The fault matrix of docs/reliability.md (``scripts/fault_matrix.py``): the page's table is current,
and every test a cell names exists, so a renamed or deleted test cannot leave a cell claiming it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fault_matrix.py"
sys.path.insert(0, str(REPO / "scripts"))

from fault_matrix import CELLS, FAULTS, STAGES  # noqa: E402


def test_doc_table_is_current():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/fault_matrix.py --write"


def test_every_named_test_exists():
    for (stage, fault), (outcome, _, tests) in CELLS.items():
        assert stage in STAGES and fault in FAULTS and outcome in ("resumes", "rides out", "stops", "n/a"), (stage, fault)
        assert bool(tests) == (outcome != "n/a"), (stage, fault)
        for node in tests:
            path, name = node.split("::")
            source = (REPO / path).read_text()
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), node


def test_a_stale_table_fails_the_check(tmp_path):
    doc = tmp_path / "reliability.md"
    doc.write_text((REPO / "docs" / "reliability.md").read_text().replace("**rides out**", "**resumes**", 1))
    result = subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)], capture_output=True, text=True)
    assert result.returncode == 1 and "the fault matrix differs from CELLS" in result.stderr
