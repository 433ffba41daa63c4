"""Every recipe's tiny twin trains for a few steps through ``axolotl.cli.train`` and shows what its
``# twin-checks:`` header promises (the checks: ``twin_runs.CHECKS``).

The twins are derived from ``recipes/**/*.yml`` (``distill_plugin.testing.twins``), so a recipe added
later is picked up here; a check name ``twin_runs`` does not know fails. All twins share the
session's tiny pair, data and prepared-data directory (``twin_root``). A twin whose engine cannot
run on CPU (``twin.cpu_blocker``) is only validated (``tests/test_twins.py``), not trained here; a
twin that needs more than the tiny pair is trained, and its promises checked, by the test
``trained_elsewhere`` names.
"""

from __future__ import annotations

import pytest
import yaml

from axolotl_runs import REPO
from distill_plugin.testing.recipe_header import read_header, twin_checks
from distill_plugin.testing.twins import cpu_blocker
from twin_runs import CHECKS, check_promises, train_twin

pytestmark = pytest.mark.slow


def trained_elsewhere(cfg: dict) -> str | None:
    """Recipes whose twin needs more than the shared tiny pair, trained by their own end-to-end test."""
    if (cfg.get("distill") or {}).get("teacher_server"):
        return "tests/teachers/test_e2e_server.py (starts the teacher's HTTP server)"
    if str(cfg.get("fsdp_version")) == "2":
        return "tests/test_e2e_fsdp2.py (two FSDP2 processes vs one, teacher replicated and sharded)"
    return None


RECIPES = [p for p in sorted((REPO / "recipes").rglob("*.yml"))
           if not cpu_blocker(cfg := yaml.safe_load(p.read_text())) and not trained_elsewhere(cfg)]


def test_every_promised_check_exists():
    for recipe in sorted((REPO / "recipes").rglob("*.yml")):
        if cpu_blocker(yaml.safe_load(recipe.read_text())):
            continue  # not trainable here (validated only)
        unknown = set(twin_checks(read_header(recipe))) - CHECKS.keys()
        assert not unknown, f"{recipe}: twin-checks {sorted(unknown)} are not implemented in tests/twin_runs.py"


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_twin_trains_and_keeps_its_promises(recipe, twin_root, tmp_path):
    run = train_twin(recipe, twin_root, tmp_path)
    check_promises(recipe, run)
    if run.config.get("adapter") and "distill" in run.config:
        # The plugin, not the twin, switched Axolotl's auto-enabled LoRA kernels off (no CUDA here).
        assert run.output.count("no CUDA device: switched off lora_mlp_kernel") == 1, run.output[-3000:]
