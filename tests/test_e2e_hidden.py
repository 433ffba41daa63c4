"""Hidden-state KD end to end through ``axolotl.cli.train``: a student shallower and narrower than
its teacher (2 × 32 vs 4 × 48), full fine-tune, LoRA and two processes; the checkpoints hold the
student only and the projectors sit beside them."""

from __future__ import annotations

import re

import pytest
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from axolotl_runs import OFFLINE_FULL_FINETUNE, assert_two_processes_match_one, learning, run_axolotl_train, twin_of
from distill_plugin.hidden.projector import PROJECTOR_FILE

pytestmark = pytest.mark.slow
LORA = dict(
    adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=0.05, gradient_checkpointing=True,
    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
    lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,  # Triton kernels need CUDA
)


@pytest.fixture(scope="module")
def deep_pair(tmp_path_factory):
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    root, tok = tmp_path_factory.mktemp("deep_pair"), build_tokenizer()
    build_model(root / "teacher", tok, hidden_size=48, num_layers=4, seed=1)
    build_model(root / "student", tok, hidden_size=32, num_layers=2, seed=2)
    return root / "teacher", root / "student"


def recipe_for(tmp_path, pair, data, name, **overrides):
    """The twin of recipes/hidden_state_kd.yml (uniform:4 → uniform:2 on the 2-layer student) with the
    learning tests' settings (axolotl_runs.LEARNING)."""
    teacher, student = pair
    return twin_of("hidden_state_kd.yml", tmp_path / f"{name}.yml", student, data, teacher=teacher,
                   output_dir=str(tmp_path / name), **learning(**overrides))


def tensor_names(directory):
    names = set()
    for file in directory.glob("*.safetensors"):
        if file.name != PROJECTOR_FILE:
            with safe_open(str(file), "pt") as f:
                names |= set(f.keys())
    return names


def assert_hidden_loss_falls(logs):
    assert len(logs) >= 10 and all({"kd_loss", "ce_loss", "hidden_loss"} <= set(e) for e in logs)
    first, last = (sum(e["hidden_loss"] for e in part) / 3 for part in (logs[:3], logs[-3:]))
    assert last < 0.8 * first, (first, last)


def test_full_finetune(tmp_path, deep_pair, arithmetic_data):
    recipe = recipe_for(tmp_path, deep_pair, arithmetic_data, "full", val_set_size=0.25, eval_steps=10, save_steps=10)
    output, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_hidden_loss_falls(logs)
    evals = [float(v) for v in re.findall(r"'eval_hidden_loss': '?([-\d.e+]+)", output)]
    assert len(evals) >= 2 and all(0 < v < 2 for v in evals)  # cosine: per-token mean in [0, 2]
    for directory in (tmp_path / "full", tmp_path / "full" / "checkpoint-10"):
        assert (directory / PROJECTOR_FILE).exists(), directory
        assert not any("maps." in name or "projector" in name for name in tensor_names(directory))
        _, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"], info
    with safe_open(str(tmp_path / "full" / PROJECTOR_FILE), "pt") as f:
        assert f.get_slice("0.maps.0.weight").get_shape() == [48, 32]  # student 32 → teacher 48


def test_lora_student(tmp_path, deep_pair, arithmetic_data):
    """The base is frozen, the adapters and the projectors train; the adapter dir is adapters only."""
    from peft import PeftModel

    recipe = recipe_for(tmp_path, deep_pair, arithmetic_data, "lora", **LORA)
    _, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_hidden_loss_falls(logs)
    assert all(e["grad_norm"] > 0 for e in logs)
    assert (tmp_path / "lora" / PROJECTOR_FILE).exists()
    assert tensor_names(tmp_path / "lora") and all("lora_" in name for name in tensor_names(tmp_path / "lora"))
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(deep_pair[1]), tmp_path / "lora")


def test_two_processes_match_one(tmp_path, deep_pair, arithmetic_data):
    """Global batch 4 = 1×4 = 2×2: the same losses (hidden included) and grad norms; the projectors'
    gradients are averaged across processes like the model's."""
    make = lambda name, **kw: recipe_for(tmp_path, deep_pair, arithmetic_data, name, **kw)
    assert_two_processes_match_one(make, tmp_path, keys=("loss", "grad_norm", "kd_loss", "ce_loss", "hidden_loss"))


def test_offline_topk_logits_with_online_hidden_states(tmp_path, deep_pair, arithmetic_data):
    """Logits from the offline store, hidden states from the online teacher, in one run."""
    from distill_plugin.offline.capture import capture_teacher

    teacher, student = deep_pair
    recipe = twin_of(
        "offline_topk_kd.yml", tmp_path / "offline.yml", student, arithmetic_data, teacher_logits=tmp_path / "logits",
        output_dir=str(tmp_path / "offline"), **OFFLINE_FULL_FINETUNE,
        **learning(max_steps=12, learning_rate=0.01, save_steps=1000, distill={
            "teacher": str(teacher), "ce_weight": 0.0, "hidden_weight": 1.0,
            "hidden_layers": "last:2", "hidden_loss": "normalized_mse"}),
    )
    capture_teacher(teacher, tmp_path / "logits", config=recipe, k=8, progress=False)
    _, logs = run_axolotl_train(recipe, cwd=tmp_path)
    assert_hidden_loss_falls(logs)
    assert (tmp_path / "offline" / PROJECTOR_FILE).exists()
