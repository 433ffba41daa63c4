"""End to end through ``axolotl.cli.train`` with the plugin: full fine-tune, LoRA, two processes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from safetensors import safe_open

from axolotl_runs import assert_two_processes_match_one, learning, run_axolotl_train, twin_of

pytestmark = pytest.mark.slow


def recipe_for(tmp_path, tiny_pair, data, name, **overrides):
    """The twin of recipes/logit_kd_qwen2_1p5b.yml with the learning tests' settings (axolotl_runs.LEARNING)."""
    teacher, student = tiny_pair
    return twin_of("logit_kd_qwen2_1p5b.yml", tmp_path / f"{name}.yml", student, data, teacher=teacher,
                   output_dir=str(tmp_path / name), **learning(**overrides))


def saved_tensor_shapes(out_dir: Path) -> dict[str, tuple]:
    shapes = {}
    for file in out_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def assert_learns_and_logs(logs, factor=0.85):
    assert len(logs) >= 10
    assert all("kd_loss" in entry and "ce_loss" in entry for entry in logs)
    first, last = sum(e["loss"] for e in logs[:3]) / 3, sum(e["loss"] for e in logs[-3:]) / 3
    assert last < factor * first, (first, last)


@pytest.mark.e2e_smoke
def test_full_finetune(tmp_path, tiny_pair, arithmetic_data):
    recipe = recipe_for(tmp_path, tiny_pair, arithmetic_data, "full", val_set_size=0.25, eval_steps=10)
    output, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_learns_and_logs(logs)
    # The start-up lines reach Axolotl's log; the logged perplexity is the CE's, not exp(KD+CE).
    assert re.search(r"distill_plugin: teacher = online \S+teacher, dtype torch.float32, device cpu, "
                     r"attention \w+; vocab 261 shared tokens", output), output[-4000:]
    assert all(e["ppl"] == pytest.approx(math.exp(e["ce_loss"]), rel=1e-3) for e in logs)
    evals = [float(v) for v in re.findall(r"'eval_kd_loss': '?([-\d.e+]+)", output)]
    assert len(evals) >= 2 and all(0 <= v < 10 for v in evals)  # normalised, not summed
    shapes = saved_tensor_shapes(tmp_path / "full")
    student_cfg = json.loads((tiny_pair[1] / "config.json").read_text())
    # The checkpoint is the student's alone: its width, none of the teacher's 48-wide tensors.
    assert shapes["model.embed_tokens.weight"][1] == student_cfg["hidden_size"] == 32
    assert not any(48 in shape for shape in shapes.values())
    assert not any("teacher" in name for name in shapes)


def test_lora_student(tmp_path, tiny_pair, arithmetic_data):
    recipe = recipe_for(
        tmp_path, tiny_pair, arithmetic_data, "lora",
        adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        learning_rate=0.05, gradient_checkpointing=True,
        # Axolotl auto-enables its Triton LoRA kernels, which need CUDA.
        lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
    )
    _, logs = run_axolotl_train(recipe, cwd=tmp_path)
    # A random-init student with frozen embeddings and lm_head plateaus near uniform quickly;
    # the adapters still have to pull the loss down.
    assert_learns_and_logs(logs, factor=0.99)
    assert all(entry["grad_norm"] > 0 for entry in logs)
    adapter = saved_tensor_shapes(tmp_path / "lora")
    assert adapter and all("lora_" in name for name in adapter)


def test_two_processes_match_one(tmp_path, tiny_pair, arithmetic_data):
    """Same global batch (4 = 1×4 = 2×2), sequential sampling: same losses and grad norms.

    The two-process run sets ``ddp_find_unused_parameters`` (one DDP run tests both): regression, with the
    loss outside the forward, DDP's find_unused_parameters saw lm_head.weight used after its hooks had
    fired ("Expected to mark a variable ready only once") at step 1."""
    def make(name, **kw):
        unused = {"ddp_find_unused_parameters": True} if name == "two" else {}
        return recipe_for(tmp_path, tiny_pair, arithmetic_data, name, **kw, **unused)

    output = assert_two_processes_match_one(make, tmp_path)
    assert '"ddp_find_unused_parameters": true' in output, output[-3000:]  # Axolotl's config dump
    assert "mark a variable ready only once" not in output


def test_sample_packing(tmp_path, tiny_pair, arithmetic_data):
    """Axolotl's multipack collator path: teacher and student get the same packed batch, with an
    attention that keeps the documents apart (``tests/test_packing.py`` checks the logits)."""
    recipe = recipe_for(tmp_path, tiny_pair, arithmetic_data, "packed", sample_packing=True, attn_implementation="sdpa",
                        pad_to_sequence_len=True, micro_batch_size=1, max_steps=12)
    _, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_learns_and_logs(logs, factor=0.95)
