"""``axolotl.cli.train`` with an FSDP2 student over 2 gloo processes on CPU (``fsdp_version: 2``), the
teacher replicated and sharded (``distill.teacher_placement``): the same per-step loss, grad norm
and components as one process with the same global batch (4 = 1×4 = 2×2, sequential sampling).

On CPU Accelerate would drop the FSDP request silently (``no_cuda.fsdp2_on_cpu`` keeps it); the
``pytorch_model_fsdp.bin`` in the checkpoint shows the FSDP save path really ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from axolotl_runs import REPO, run_axolotl_train, run_axolotl_train_two_processes, write_recipe

pytestmark = pytest.mark.slow
TWIN = REPO / "tests" / "configs" / "fsdp2_kd.yml"


def recipe(tmp_path: Path, tiny_pair, data, name: str, **overrides) -> Path:
    teacher, student = tiny_pair
    distill = {"teacher": str(teacher), **overrides.pop("distill", {})}
    return write_recipe(
        TWIN, tmp_path / f"{name}.yml",
        base_model=str(student),
        datasets=[{"path": str(data), "type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]}],
        output_dir=str(tmp_path / name), dataset_prepared_path=str(tmp_path / f"{name}_prepared"),
        max_steps=3, save_steps=3, curriculum_sampling=True, distill=distill, **overrides,
    )


def test_fsdp2_two_processes_match_one_with_the_teacher_replicated_and_sharded(tmp_path, tiny_pair, arithmetic_data):
    no_fsdp = {"fsdp_version": None, "fsdp_config": None}
    _, reference = run_axolotl_train(recipe(tmp_path, tiny_pair, arithmetic_data, "one", micro_batch_size=4, **no_fsdp), tmp_path)
    assert len(reference) == 3
    for placement in ("replicate", "shard"):
        name = f"fsdp2_{placement}"
        path = recipe(tmp_path, tiny_pair, arithmetic_data, name, micro_batch_size=2, distill={"teacher_placement": placement})
        output, logs = run_axolotl_train_two_processes(path, tmp_path)
        assert (tmp_path / name / "checkpoint-3" / "pytorch_model_fsdp.bin").exists(), output[-3000:]
        assert len(logs) == 3
        for a, b in zip(reference, logs):
            for key in ("loss", "grad_norm", "kd_loss", "ce_loss"):
                assert b[key] == pytest.approx(a[key], rel=2e-3), (placement, key, a, b)
