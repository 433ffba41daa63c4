"""Every recipe's tiny twin trains for a few steps through ``axolotl.cli.train`` and shows what its
``# twin-checks:`` header promises (the checks: ``twin_runs.CHECKS``).

The twins are derived from ``recipes/**/*.yml`` (``distill_plugin.testing.twins``), so a recipe added
later is picked up here; a check name ``twin_runs`` does not know fails. All twins share the
session's tiny pair, data and prepared-data directory (``twin_root``). A twin whose engine cannot
run on CPU (``twin.cpu_blocker``) is only validated (``tests/test_twins.py``), not trained here; a
twin that another e2e test trains (``TRAINED_ELSEWHERE``) has its promises checked there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axolotl_runs import REPO
from distill_plugin.testing.recipe_header import read_header, twin_checks
from distill_plugin.testing.twins import cpu_blocker
from twin_runs import CHECKS, check_promises, train_twin

pytestmark = pytest.mark.slow


# Recipes whose twin another e2e test trains, because it needs more than the shared tiny pair or
# because that test's run already is the twin's (one axolotl.cli.train run per feature): there it is
# trained through ``twin_runs.train_twin`` and its promises checked (``check_promises``).
TRAINED_ELSEWHERE = {
    "teacher_server_qlora.yml": "tests/teachers/test_e2e_server.py",  # starts the teacher's HTTP server
    "multi_gpu/fsdp2_qwen7b_from_32b.yml": "tests/test_e2e_fsdp2.py",  # two FSDP2 processes vs one
    "multi_gpu/fsdp2_qwen7b_from_32b_teacher_sharded.yml": "tests/test_e2e_fsdp2.py",
    "r1_distill_qwen7b.yml": "tests/data_prep/test_recipes.py",  # on the data pipeline's export
    "uld_llama_to_qwen.yml": "tests/test_e2e_uld.py",  # a trained cross-tokenizer teacher, 36 steps, learning checks
    "ema_self_distill.yml": "tests/test_ema.py",
    "attention_transfer.yml": "tests/losses/test_attention.py",  # 12 steps: the attention KL falls  # with a decay and learning rate whose kd_loss 4 steps resolve
    # a chain: stage 2's teacher is stage 1's twin's merged output
    "progressive/stage1_qwen2p5_7b_to_3b.yml": "tests/test_e2e_progressive.py",
    "progressive/stage2_qwen2p5_3b_to_1p5b.yml": "tests/test_e2e_progressive.py",
}
SMOKE = {"gkd_on_policy.yml"}  # also run on the second stack (-m e2e_smoke)


def name(recipe: Path) -> str:
    return str(recipe.relative_to(REPO / "recipes"))


RECIPES = [pytest.param(p, id=name(p), marks=[pytest.mark.e2e_smoke] if name(p) in SMOKE else [])
           for p in sorted((REPO / "recipes").rglob("*.yml"))
           if not cpu_blocker(yaml.safe_load(p.read_text())) and name(p) not in TRAINED_ELSEWHERE]


def test_recipes_trained_elsewhere_are_trained_there():
    for recipe, test in TRAINED_ELSEWHERE.items():
        text = (REPO / test).read_text()
        assert Path(recipe).name in text and "check_promises(" in text, (recipe, test)


def test_every_promised_check_exists():
    for recipe in sorted((REPO / "recipes").rglob("*.yml")):
        if cpu_blocker(yaml.safe_load(recipe.read_text())):
            continue  # not trainable here (validated only)
        unknown = set(twin_checks(read_header(recipe))) - CHECKS.keys()
        assert not unknown, f"{recipe}: twin-checks {sorted(unknown)} are not implemented in tests/twin_runs.py"


@pytest.mark.parametrize("recipe", RECIPES)
def test_twin_trains_and_keeps_its_promises(recipe, twin_root, tmp_path):
    run = train_twin(recipe, twin_root, tmp_path)
    check_promises(recipe, run)
    if run.config.get("adapter") and "distill" in run.config:
        # The plugin, not the twin, switched Axolotl's auto-enabled LoRA kernels off (no CUDA here).
        assert run.output.count("no CUDA device: switched off lora_mlp_kernel") == 1, run.output[-3000:]
