"""``axolotl.cli.train`` on the derived twins of the FSDP2 recipes (``recipes/multi_gpu/fsdp2_*.yml``):
an FSDP2 student over 2 gloo processes on CPU (``fsdp_version: 2``), the teacher replicated and
sharded (``distill.teacher_placement``), each twin's ``# twin-checks:`` verified; and the same
per-step loss, grad norm and components as one process with the same global batch (4 = 1×4 = 2×2,
sequential sampling, no packing: what the comparison needs on top of the twins).

One teacher for the three runs: the replicated recipe's 4-bit teacher (``teacher_load_in_4bit``)
is loaded in the sharded recipe's dtype here, so that both compare with one reference run (the
4-bit teacher is trained by the QLoRA twins, ``twin-checks: teacher_4bit``).

On CPU Accelerate would drop the FSDP request silently (``no_cuda.fsdp2_on_cpu`` keeps it); the
``pytorch_model_fsdp.bin`` in the checkpoint shows the FSDP save path really ran (``check_fsdp2``).
"""

from __future__ import annotations

import pytest

from axolotl_runs import REPO
from twin_runs import check_promises, train_twin

pytestmark = pytest.mark.slow
REPLICATED = REPO / "recipes" / "multi_gpu" / "fsdp2_qwen7b_from_32b.yml"
SHARDED = REPO / "recipes" / "multi_gpu" / "fsdp2_qwen7b_from_32b_teacher_sharded.yml"
COMPARABLE = dict(sample_packing=False, curriculum_sampling=True, gradient_accumulation_steps=1, micro_batch_size=2)
STEPS = 3  # three runs in this file: one step fewer than a twin's default (CI time)


def test_fsdp2_two_processes_match_one_with_the_teacher_replicated_and_sharded(tmp_path, twin_root):
    one = dict(COMPARABLE, micro_batch_size=4, fsdp_version=None, fsdp_config=None, distill={"teacher_placement": "replicate"})
    reference = train_twin(SHARDED, twin_root, tmp_path / "one", one, processes=1, steps=STEPS).logs
    same_teacher = {"distill": {"teacher_load_in_4bit": None}}
    for recipe, overrides in ((REPLICATED, same_teacher), (SHARDED, {})):
        run = train_twin(recipe, twin_root, tmp_path / recipe.stem, {**COMPARABLE, **overrides}, steps=STEPS)
        check_promises(recipe, run)
        for a, b in zip(reference, run.logs, strict=True):
            for key in ("loss", "grad_norm", "kd_loss", "ce_loss"):
                assert b[key] == pytest.approx(a[key], rel=2e-3), (recipe.name, key, a, b)
