"""Progressive distillation end to end through ``axolotl.cli.train``: the twins of the recipe pair in
``recipes/progressive/``. Stage 1 (``stage1_qwen2p5_7b_to_3b.yml``) trains a LoRA on the middle model
(``tiny.TWIN_PAIR["middle"]``) against the tiny teacher, and its adapter is merged
(``axolotl.cli.merge_lora``, the ``merge`` twin-check); stage 2 (``stage2_qwen2p5_3b_to_1p5b.yml``)
trains the tiny student against that merged folder, which its twin finds through ``Fixtures.outputs``
(stage 1's ``output_dir`` → stage 1's twin's)."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from axolotl_runs import REPO
from twin_runs import check_promises, train_twin

pytestmark = pytest.mark.slow

STAGE1 = REPO / "recipes" / "progressive" / "stage1_qwen2p5_7b_to_3b.yml"
STAGE2 = REPO / "recipes" / "progressive" / "stage2_qwen2p5_3b_to_1p5b.yml"


def parameters(model_dir) -> int:
    return AutoModelForCausalLM.from_pretrained(model_dir).num_parameters()


def weights(model_dir) -> dict:
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def test_stage_two_distils_from_stage_ones_merged_student(twin_root, tmp_path):
    first = train_twin(STAGE1, twin_root, tmp_path / "stage1", student=twin_root / "middle")
    check_promises(STAGE1, first)  # kd_loss, the adapter, and the merge into first.out / "merged"
    merged = first.out / "merged"
    trained, untrained = weights(merged), weights(twin_root / "middle")
    assert trained.keys() == untrained.keys() and any(not torch.equal(trained[k], untrained[k]) for k in trained)
    stage1_output_dir = yaml.safe_load(STAGE1.read_text())["output_dir"]
    second = train_twin(STAGE2, twin_root, tmp_path / "stage2", outputs={stage1_output_dir: first.out})
    check_promises(STAGE2, second)

    # Stage 1 learnt from the tiny teacher; stage 2 from stage 1's merged student, not from that teacher.
    assert f"distill_plugin: teacher = online {twin_root / 'teacher'}," in first.output
    assert second.config["distill"]["teacher"] == str(merged)
    assert f"distill_plugin: teacher = online {merged}," in second.output, second.output[-3000:]
    middle, teacher, student = (parameters(twin_root / name) for name in ("middle", "teacher", "student"))
    assert len({middle, teacher, student}) == 3
    assert first.probe["teacher_params"] == teacher and first.probe["trainable"][1] > middle  # base + adapter
    assert second.probe["teacher_params"] == middle and second.probe["trainable"] == [student, student]
