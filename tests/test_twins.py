"""Deriving tiny CPU twins from the real recipes (``distill_plugin.testing.twins``) and the recipes'
header contract; no training here (``tests/test_e2e_twins.py`` trains every twin)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from axolotl_runs import REPO, SUBPROCESS_ENV
from distill_plugin.testing.recipe_header import KEYS, HeaderError, gpus, read_header, twin_checks
from distill_plugin.testing.twins import Fixtures, derive_twin

RECIPES = sorted((REPO / "recipes").rglob("*.yml"))
IDS = [str(p.relative_to(REPO / "recipes")) for p in RECIPES]


def flatten(value, prefix=""):
    """``{"a": {"b": 1}, "l": [{"p": 2}]}`` → ``{"a.b": 1, "l[0].p": 2}``; a list of scalars stays a leaf."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


@pytest.fixture
def fixtures(twin_root, tmp_path):
    return Fixtures.under(twin_root, tmp_path)


def test_there_are_recipes_and_no_hand_written_twins():
    assert len(RECIPES) >= 8
    assert not (REPO / "recipes" / "tiny").exists(), "twins are derived (distill_plugin.testing.twins), not written by hand"


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_every_recipe_has_the_header(recipe):
    header = read_header(recipe)
    assert set(header) == set(KEYS) and all(header.values())
    assert twin_checks(header)
    assert gpus(header) == (8 if "multi_gpu" in recipe.parts else 1)


def test_a_broken_header_names_the_file_and_the_key(tmp_path):
    text = (REPO / "recipes" / "qlora_logit_kd.yml").read_text()
    missing = tmp_path / "missing.yml"
    missing.write_text("\n".join(line for line in text.splitlines() if not line.startswith("# sized-for:")))
    with pytest.raises(HeaderError, match=r"missing\.yml: .*lacks `# sized-for:`"):
        read_header(missing)
    twice = tmp_path / "twice.yml"
    twice.write_text("# method: x\n" + text)
    with pytest.raises(HeaderError, match=r"twice\.yml:\d+: `# method:` appears twice"):
        read_header(twice)


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_every_difference_is_listed(recipe, fixtures):
    """The twin differs from its recipe exactly where ``changes`` says, and nowhere else."""
    raw = flatten(yaml.safe_load(recipe.read_text()))
    twin = derive_twin(recipe, fixtures)
    derived = flatten(twin.config)
    differing = {key for key in raw.keys() | derived.keys() if raw.get(key) != derived.get(key)}
    listed = {change.split(":")[0] for change in twin.changes}
    for key in differing:
        assert key in listed or (key.startswith("plugins") and any(c.startswith("plugins:") for c in twin.changes)), (key, twin.changes)
    assert all(key in differing or key in ("plugins", "processes") for key in listed), (listed - differing)


def test_what_runs_on_cpu_is_kept(fixtures):
    recipe = REPO / "recipes" / "qlora_hidden_state_kd.yml"
    raw, twin = yaml.safe_load(recipe.read_text()), derive_twin(recipe, fixtures)
    for key in ("load_in_4bit", "adapter", "lora_r", "lora_target_linear", "sample_packing", "optimizer",
                "gradient_checkpointing", "lr_scheduler", "learning_rate", "chat_template"):
        assert twin.config[key] == raw[key], key
    distill = {k: v for k, v in raw["distill"].items() if k not in ("teacher", "hidden_layers")}
    assert distill.items() <= twin.config["distill"].items()  # the maths, the 4-bit teacher, its dtype
    assert twin.config["bf16"] is False and twin.config["attn_implementation"] == "sdpa"
    assert "distill.hidden_layers: uniform:4 → uniform:2 (the tiny student has 2 layers)" in twin.changes
    assert twin.processes == 1 and twin.cpu_blocker is None


def test_plain_sft_recipe_loses_its_triton_plugin_and_kernels(fixtures):
    twin = derive_twin(REPO / "recipes" / "r1_distill_qwen7b.yml", fixtures)
    assert "plugins" not in twin.config and twin.config["cut_cross_entropy"] is False
    assert all(twin.config[k] is False for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"))
    # the dataset entry keeps its parsing: only the path changes
    raw = yaml.safe_load((REPO / "recipes" / "r1_distill_qwen7b.yml").read_text())["datasets"][0]
    assert twin.config["datasets"][0] == {**raw, "path": str(fixtures.data)}


def test_plugin_recipes_leave_the_kernels_to_the_plugin(fixtures):
    """Axolotl turns its LoRA kernels on by itself; the plugin turns them off without CUDA, which the
    QLoRA twins then exercise (preflight.switch_off_cuda_only)."""
    twin = derive_twin(REPO / "recipes" / "qlora_logit_kd.yml", fixtures)
    assert not any(key.startswith("lora_") and key.endswith("_kernel") for key in twin.config)


def test_multi_gpu_recipe_runs_as_two_processes(fixtures):
    twin = derive_twin(REPO / "recipes" / "multi_gpu" / "logit_kd_qwen2_1p5b_ddp.yml", fixtures)
    assert twin.processes == 2 and any(c.startswith("processes: 8 GPUs → 2 CPU processes") for c in twin.changes)


def test_a_resource_without_fixture_is_an_error(twin_root, tmp_path):
    with pytest.raises(ValueError, match=r"offline_topk_kd\.yml: distill\.teacher_logits is set, but the fixtures have no `teacher_logits`"):
        derive_twin(REPO / "recipes" / "offline_topk_kd.yml", Fixtures.under(twin_root, tmp_path, teacher_logits=None))


def test_engine_that_cannot_run_on_cpu_is_reported(fixtures, tmp_path):
    recipe = tmp_path / "zero2.yml"
    recipe.write_text((REPO / "recipes" / "logit_kd_qwen2_1p5b.yml").read_text() + "deepspeed: deepspeed_configs/zero2.json\n")
    assert "DeepSpeed" in derive_twin(recipe, fixtures).cpu_blocker


def test_extra_resource_fixtures_stand_in_for_their_keys(fixtures, tmp_path):
    """How a new teacher source plugs in: its distill key and a fixture value (here, an extra key)."""
    from dataclasses import replace

    recipe = tmp_path / "r.yml"
    recipe.write_text((REPO / "recipes" / "logit_kd_qwen2_1p5b.yml").read_text())
    twin = derive_twin(recipe, replace(fixtures, distill={"teacher": "http-stand-in"}))
    assert twin.config["distill"]["teacher"] == "http-stand-in"


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_every_twin_loads_with_axolotl(recipe, fixtures, monkeypatch):
    """Axolotl's own config loader (plugins registered, the plugin's raw-config checks) accepts every
    twin, as launched (a multi-GPU twin's processes: WORLD_SIZE); the trainable ones are trained in
    tests/test_e2e_twins.py."""
    from axolotl.cli.config import load_cfg

    twin = derive_twin(recipe, fixtures)
    if twin.config.get("deepspeed"):
        pytest.importorskip("deepspeed", reason="Axolotl's loader needs deepspeed installed for a `deepspeed:` config")
    monkeypatch.setenv("WORLD_SIZE", str(twin.processes))
    path = twin.write(fixtures.workdir / "twin.yml")
    cfg = load_cfg(str(path))
    cross = (cfg.get("distill") or {}).get("cross_tokenizer", "off") != "off"  # its student has the other tokenizer
    assert cfg.base_model == str(fixtures.cross_student if cross else fixtures.student)
    assert cfg.sequence_len <= 256 and cfg.max_steps == 4


def test_cli_writes_the_twin_and_prints_its_changes(twin_root, tmp_path):
    out = tmp_path / "qlora.yml"
    proc = subprocess.run([sys.executable, "-m", "distill_plugin.testing.twins", str(REPO / "recipes" / "qlora_logit_kd.yml"),
                           "--fixtures", str(twin_root), "-o", str(out)], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    twin = derive_twin(REPO / "recipes" / "qlora_logit_kd.yml", Fixtures.under(twin_root, twin_root / "qlora"))
    assert yaml.safe_load(out.read_text()) == twin.config
    for change in twin.changes:
        assert change in proc.stdout and f"#   {change}" in out.read_text()


def test_served_teacher_twin_points_at_the_fixture_server(fixtures):
    """Only the server's address and served name change; top_k, the API-key variable, timeouts stay."""
    from dataclasses import replace

    recipe = REPO / "recipes" / "teacher_server_qlora.yml"
    raw = yaml.safe_load(recipe.read_text())["distill"]["teacher_server"]
    server = {"url": "http://127.0.0.1:9999/v1", "model": "tiny-teacher"}
    twin = derive_twin(recipe, replace(fixtures, teacher_server=server))
    assert twin.config["distill"]["teacher_server"] == {**raw, **server}
    assert f"distill.teacher_server.url: {raw['url']} → {server['url']} (fixture)" in twin.changes
    with pytest.raises(ValueError, match=r"distill\.teacher_server is set, but the fixtures have no `teacher_server`"):
        derive_twin(recipe, replace(fixtures, teacher_server=None))


def test_a_later_stage_distils_from_the_earlier_stages_twin(fixtures, tmp_path):
    """recipes/progressive/: stage 2's teacher is stage 1's merged output_dir; its twin's, given where
    stage 1's twin wrote (``Fixtures.outputs``), is the same folder under that twin's output; without
    it, the fixtures' teacher stands in (validation only)."""
    from dataclasses import replace

    stage1, stage2 = (REPO / "recipes" / "progressive" / name for name in ("stage1_qwen2p5_7b_to_3b.yml", "stage2_qwen2p5_3b_to_1p5b.yml"))
    written, teacher = yaml.safe_load(stage1.read_text())["output_dir"], yaml.safe_load(stage2.read_text())["distill"]["teacher"]
    assert teacher.startswith(written + "/")  # stage 2 reads what stage 1 (and its merge) wrote
    twin = derive_twin(stage2, replace(fixtures, outputs={written: tmp_path / "stage1" / "out"}))
    merged = tmp_path / "stage1" / "out" / teacher[len(written) + 1:]
    assert twin.config["distill"]["teacher"] == str(merged)
    assert f"distill.teacher: {teacher} → {merged} (the twin of the stage that writes it)" in twin.changes
    assert derive_twin(stage2, fixtures).config["distill"]["teacher"] == str(fixtures.teacher)
