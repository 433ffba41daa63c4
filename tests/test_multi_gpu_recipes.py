"""The multi-GPU recipes (recipes/multi_gpu/) pass Axolotl's config schema on the machine they are
sized for (8 bf16 GPUs, sm_90) and the plugin's own registration checks with 8 processes, and carry
the recipe header (README recipe table) and the per-GPU memory arithmetic."""

from __future__ import annotations

import copy

import pytest
import yaml

from axolotl_runs import REPO

RECIPES = sorted((REPO / "recipes" / "multi_gpu").glob("*_from_32b*.yml"))
GPU_CAPS = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 8, "compute_capability": "sm_90"}
HEADER = ("recipe", "method", "student", "teacher", "sized-for", "twin-checks")
ARITHMETIC = ("weights", "grads", "AdamW", "activations", "teacher share", "loss buffers", "total")
ZERO3 = REPO / "scripts" / "ds_configs" / "zero3_bf16.json"


def load(path):
    raw = yaml.safe_load(path.read_text())
    if raw.get("deepspeed"):  # relative to the repository root, where the launch line runs
        raw["deepspeed"] = str(ZERO3)
    return raw


def test_the_three_variants_exist():
    names = {p.name for p in RECIPES}
    assert names == {"fsdp2_qwen7b_from_32b.yml", "fsdp2_qwen7b_from_32b_teacher_sharded.yml", "zero3_qwen7b_from_32b.yml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_with_axolotl_and_the_plugin(path, monkeypatch):
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    def validate(raw):  # the plugin's registration checks, then Axolotl's merged schema
        cfg = DictDefault(copy.deepcopy(raw))
        prepare_plugins(cfg)
        return validate_config(cfg, capabilities=GPU_CAPS, env_capabilities={"torch_version": torch.__version__.split("+")[0]})

    raw = load(path)
    monkeypatch.setenv("WORLD_SIZE", "8")  # what `accelerate launch --num_processes 8` sets
    cfg = validate(raw)
    assert cfg["distill"]["teacher_placement"] == raw["distill"]["teacher_placement"]
    assert bool(cfg.get("deepspeed")) != bool(cfg.get("fsdp_config"))
    bad = copy.deepcopy(raw)
    bad["distill"]["teacher_placement"] = "everywhere"  # the validation is real
    with pytest.raises((Exception, SystemExit)):
        validate(bad)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_header_and_memory_arithmetic(path):
    header = path.read_text().split("base_model:")[0]
    lines = header.splitlines()
    for i, key in enumerate(HEADER):
        assert lines[i].startswith(f"# {key}: "), (path.name, i, lines[i])
    for word in ARITHMETIC:
        assert word.lower() in header.lower(), (path.name, word)
