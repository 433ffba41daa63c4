"""On-policy distillation (λ = 0.5) end to end through ``axolotl.cli.train``: full fine-tune under DDP
(2 gloo processes) and LoRA with gradient checkpointing in one process (sample packing is refused
before any data or model loads: ``tests/test_preflight.py``, in-process). The
one-process full fine-tune is the recipe's own twin (``tests/test_e2e_twins.py[gkd_on_policy.yml]``:
the schedule's decisions, both kinds of step, every step's KD loss and gradient, the saved model
reloaded; ``twin_runs.check_on_policy``, ``check_reload``)."""

from __future__ import annotations

import math

import pytest

from axolotl_runs import run_axolotl_train, run_axolotl_train_two_processes, twin_of
from distill_plugin.onpolicy.schedule import StepSchedule

pytestmark = pytest.mark.slow


def recipe_for(tmp_path, tiny_pair, data, name, **overrides):
    """The twin of recipes/gkd_on_policy.yml: 6 steps of 2 micro-batches of 2, no eval, fp32 teacher."""
    teacher, student = tiny_pair
    settings = dict(output_dir=str(tmp_path / name), max_steps=6, micro_batch_size=2, gradient_accumulation_steps=2,
                    val_set_size=0.0, eval_steps=None, save_steps=6, learning_rate=0.003,
                    distill={"teacher_dtype": "float32", "chunk_size": 64})
    return twin_of("gkd_on_policy.yml", tmp_path / f"{name}.yml", student, data, teacher=teacher, **{**settings, **overrides})


def assert_gkd_logs(logs, steps=6, processes=1):
    """Every step logs the components and the on-policy statistics; the decisions are the schedule's.
    ``generated_completions`` is summed over processes: all of them sampled for every row of every
    micro-batch of an on-policy step (2 micro-batches of 2), none on the other steps."""
    assert len(logs) == steps
    decisions = StepSchedule(0.5, seed=0).decisions(0, steps)
    assert 0 < sum(decisions) < steps  # both kinds of step happen in the run
    for k, entry in enumerate(logs, start=1):
        assert entry["on_policy"] == pytest.approx(sum(decisions[:k]) / k, abs=1e-4)
        assert ("generated_length" in entry) == decisions[k - 1]
        assert entry["kd_loss"] > 0 and entry["grad_norm"] > 0 and math.isfinite(entry["loss"])
        assert entry["generated_completions"] == (processes * 2 * 2 if decisions[k - 1] else 0), (k, entry)
        if decisions[k - 1]:
            assert 0 < entry["generated_length"] <= 16 and 0 < entry["generation_time_share"] < 1


def test_gkd_full_finetune_two_processes(tmp_path, tiny_pair, arithmetic_data):
    """DDP, as users run GKD: both ranks take the schedule's decision at every step (the summed
    completion count would be half otherwise) and the run ends though their samples' lengths differ."""
    output, logs = run_axolotl_train_two_processes(recipe_for(tmp_path, tiny_pair, arithmetic_data, "full"), cwd=tmp_path)
    assert_gkd_logs(logs, processes=2)
    assert (tmp_path / "full" / "model.safetensors").exists()


def test_gkd_lora_with_gradient_checkpointing(tmp_path, tiny_pair, arithmetic_data):
    recipe = recipe_for(
        tmp_path, tiny_pair, arithmetic_data, "lora", adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        learning_rate=0.05, gradient_checkpointing=True,
    )
    _, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_gkd_logs(logs)
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()
