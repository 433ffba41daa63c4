"""Import boundaries: the library never imports data_prep or its own testing utilities, data_prep
uses only distill_plugin's public modules and names, the library's imports (function-level ones and
dotted paths in strings included) form no cycle and go down the layers of
``scripts/layer_report.py``, and scripts/ never imports tests/."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("layer_report", REPO / "scripts" / "layer_report.py")
layers = sys.modules.setdefault("layer_report", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(layers)
# What data_prep may import from the library: public modules that export what it needs.
# ``args`` (the distill: block, to validate a recipe) and ``teachers`` (``load_teacher``): the
# pre-training checks (data_prep/pair_recipe.py) load a recipe's pair exactly as training does.
PUBLIC_FOR_DATA_PREP = {"distill_plugin.generation", "distill_plugin.jsonl", "distill_plugin.shards",
                        "distill_plugin.offline", "distill_plugin.evaluation", "distill_plugin.args",
                        "distill_plugin.teachers"}


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_library_does_not_import_data_prep_or_testing_utilities():
    bad = []
    for path in sources("distill_plugin"):
        rel = path.relative_to(REPO).as_posix()
        for module, _, line, _ in layers.imports(path):
            if module.split(".")[0] == "data_prep":
                bad.append(f"{rel}:{line}: {module}")
            inside_testing = rel.startswith(("distill_plugin/testing/", "distill_plugin/demo/"))
            if module.startswith("distill_plugin.testing") and not inside_testing:
                bad.append(f"{rel}:{line}: {module}")
    assert not bad, bad


def test_data_prep_uses_only_public_library_api():
    bad = []
    for path in sources("data_prep"):
        for module, names, line, _ in layers.imports(path):
            if module.split(".")[0] != "distill_plugin":
                continue
            private = [n for n in names if n.startswith("_")]
            if module not in PUBLIC_FOR_DATA_PREP or private:
                bad.append(f"{path.relative_to(REPO)}:{line}: from {module} import {', '.join(names)}")
    assert not bad, bad


def test_the_checks_see_imports():
    # the scanner resolves relative imports (else the two tests above could pass vacuously)
    found = {m for m, _, _, _ in layers.imports(REPO / "data_prep" / "generate.py")}
    assert {"distill_plugin.generation", "data_prep.io", "data_prep.trajectory"} <= found
    found = {m for m, _, _, _ in layers.imports(REPO / "distill_plugin" / "demo" / "run.py")}
    assert "distill_plugin.testing.tiny" in found


def test_no_import_cycles():
    # module-level and function-level imports alike: a deferred import only hides a cycle
    scan = layers.scan()
    assert not layers.cycles(scan.edges), "\n".join(
        e.where() for c in layers.cycles(scan.edges) for e in scan.edges if e.source in c and e.target in c)


def test_imports_go_down_the_layers():
    scan = layers.scan()
    assert {layers.layer_of(m) for m in scan.modules} <= set(range(len(layers.LAYERS)))  # every module declared
    assert not layers.upward(scan.edges), "\n".join(e.where() for e in layers.upward(scan.edges))


def test_string_routes_resolve_and_go_down():
    scan = layers.scan((layers.ROOT, "data_prep", "scripts"))
    assert not scan.unresolved, scan.unresolved
    assert any(e.route for e in scan.edges)  # the plugin's args path at least: the scan sees routes
    up = layers.upward([e for e in scan.edges if e.route])
    assert not up, [e.where() for e in up]
    # plugin paths in the recipes and the console-script entry points name something that exists
    paths = {p for recipe in (REPO / "recipes").rglob("*.yml")
             for p in (yaml.safe_load(recipe.read_text()) or {}).get("plugins", []) or []}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"].values()
    paths |= {s.replace(":", ".") for s in scripts if s.startswith(layers.ROOT)}
    assert paths, "no plugin or entry-point paths found"
    bad = [p for p in paths if p.startswith(layers.ROOT) and layers.resolve(p, scan.modules) is None]
    assert not bad, bad


def test_scripts_do_not_import_tests():
    assert not layers.imports_of_tests("scripts"), layers.imports_of_tests("scripts")


def test_the_layer_checks_see_what_they_check(tmp_path):
    # the cycle finder, the order and the route scanner on known inputs (else the checks could pass vacuously)
    edge = layers.Edge
    assert layers.cycles([edge("a", "b", 1, False), edge("b", "a", 2, True)]) == [["a", "b"]]
    up = [edge("distill_plugin.losses.kd", "distill_plugin.trainer", 1, True)]
    assert layers.upward(up) == up
    assert layers.layer_of("distill_plugin.alignment.setup") > layers.layer_of("distill_plugin.alignment.tokens")
    source = tmp_path / "routes.py"
    source.write_text('import importlib\nimportlib.import_module("distill_plugin.trainer")\n'
                      'importlib.import_module(f"distill_plugin.{x}")\nimport logging\nlogging.getLogger("distill_plugin.x")\n')
    assert [(d, line) for d, line, _ in layers.routes(source)] == [(None, 3), ("distill_plugin.trainer", 2)]
    found = layers.scan()
    assert any(e.deferred for e in found.edges) and any(not e.deferred for e in found.edges)
    assert re.match(layers.ROUTE, "distill_plugin.DistillPlugin")
