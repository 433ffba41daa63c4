"""Import boundaries: the library never imports data_prep or its own testing utilities, and data_prep
uses only distill_plugin's public modules and names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What data_prep may import from the library: public modules that export what it needs.
PUBLIC_FOR_DATA_PREP = {"distill_plugin.generation", "distill_plugin.jsonl", "distill_plugin.shards",
                        "distill_plugin.offline", "distill_plugin.evaluation"}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import in ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_library_does_not_import_data_prep_or_testing_utilities():
    bad = []
    for path in sources("distill_plugin"):
        rel = path.relative_to(REPO).as_posix()
        for module, _, line in imports(path):
            if module.split(".")[0] == "data_prep":
                bad.append(f"{rel}:{line}: {module}")
            inside_testing = rel.startswith(("distill_plugin/testing/", "distill_plugin/demo/"))
            if module.startswith("distill_plugin.testing") and not inside_testing:
                bad.append(f"{rel}:{line}: {module}")
    assert not bad, bad


def test_data_prep_uses_only_public_library_api():
    bad = []
    for path in sources("data_prep"):
        for module, names, line in imports(path):
            if module.split(".")[0] != "distill_plugin":
                continue
            private = [n for n in names if n.startswith("_")]
            if module not in PUBLIC_FOR_DATA_PREP or private:
                bad.append(f"{path.relative_to(REPO)}:{line}: from {module} import {', '.join(names)}")
    assert not bad, bad


def test_the_checks_see_imports():
    # the scanner resolves relative imports (else the two tests above could pass vacuously)
    found = {m for m, _, _ in imports(REPO / "data_prep" / "generate.py")}
    assert {"distill_plugin.generation", "data_prep.io", "data_prep.trajectory"} <= found
    found = {m for m, _, _ in imports(REPO / "distill_plugin" / "demo" / "run.py")}
    assert "distill_plugin.testing.tiny" in found
