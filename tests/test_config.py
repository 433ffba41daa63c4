"""Config validation through Axolotl's own loader, bad-config errors, every recipe in recipes/ and
every YAML snippet in the README and the user docs (USER_DOCS)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from distill_plugin.args import DistillConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yml"))


# The pages whose snippets are checked: the README and the docs pages that show configs and commands.
USER_DOCS = ["README.md", *(f"docs/{name}.md" for name in ("configuration", "recipes", "scaling", "testing", "evaluation")),
             *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs" / "methods").glob("*.md"))]


def page_blocks(page: str, lang: str) -> list[str]:
    """One page's fenced code blocks in one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", (REPO / page).read_text(), flags=re.S | re.M)


def readme_blocks(lang: str) -> list[str]:
    """The fenced code blocks in one language of the README, then of the other USER_DOCS pages."""
    return [block for page in USER_DOCS for block in page_blocks(page, lang)]


# The YAML snippets are excerpts: validated on top of the keys Axolotl requires to train.
TRAINING_KEYS = {"micro_batch_size": 1, "num_epochs": 1, "learning_rate": 1e-5, "output_dir": "out", "sequence_len": 512,
                 "base_model": "Qwen/Qwen2.5-1.5B", "plugins": ["distill_plugin.DistillPlugin"],
                 "datasets": [{"path": "data.jsonl", "type": "chat_template"}]}
CONFIGS = {str(p.relative_to(REPO)): yaml.safe_load(p.read_text()) for p in RECIPES}
CONFIGS.update({f"{page} yaml #{i}": {**TRAINING_KEYS, **yaml.safe_load(block)}
                for page in USER_DOCS for i, block in enumerate(page_blocks(page, "yaml"), 1)})


def launched_like_its_recipe(name: str, monkeypatch) -> None:
    """Multi-GPU recipes are validated as their launch line runs them: 8 processes, from the repo root."""
    if name.startswith("recipes/multi_gpu/"):
        monkeypatch.setenv("WORLD_SIZE", "8")
        monkeypatch.chdir(REPO)


def axolotl_validate(cfg: dict):
    """Register the config's plugins and validate with Axolotl's merged pydantic model (no download)."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(cfg)
    prepare_plugins(cfg)
    return validate_config(cfg)


def base_cfg(**distill):
    return {
        "base_model": "Qwen/Qwen2-1.5B",
        "plugins": ["distill_plugin.DistillPlugin"],
        "distill": {"teacher": "Qwen/Qwen2-7B", **distill},
        "datasets": [{"path": "data.jsonl", "type": "chat_template"}],
        **TRAINING_KEYS,
    }


def test_distill_block_survives_axolotl_loader():
    """Regression: keys not declared in the plugin's pydantic args are silently dropped by Axolotl."""
    block = {"divergence": "jsd", "beta": 0.3, "temperature": 2.0, "kd_weight": 0.6, "ce_weight": 0.4, "chunk_size": 256}
    cfg = axolotl_validate(base_cfg(**block))
    for key, value in block.items():
        assert cfg["distill"][key] == value
    assert DistillConfig.model_validate(dict(cfg["distill"])).kd_settings().kd_scale == pytest.approx(0.6 * 4)


def setup_error(cfg: dict, capsys) -> str:
    """The plugin's one-line error for ``cfg`` (exit code 2 at registration, before validation)."""
    with pytest.raises(SystemExit) as info:
        axolotl_validate(cfg)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill_plugin: error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "distill,needle",
    [
        ({"divergence": "kl_forward"}, "distill.divergence"),
        ({"kd_weight": -1.0}, "distill.kd_weight"),
        ({"ce_weight": -0.5}, "distill.ce_weight"),
        ({"teacher_load_in_4bit": True, "teacher_load_in_8bit": True}, "teacher_load_in_8bit"),
        ({"teacher": None}, "teacher"),
        ({"temprature": 2.0}, "distill.temprature"),
        ({"beta": 1.5}, "distill.beta"),
        ({"temperature": 0.0}, "distill.temperature"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "kd_weight"),
        ({"teacher_logits": "logits/"}, "exactly one"),
        ({"hidden_weight": 1.0, "hidden_layers": "uniform:0"}, "hidden_layers"),
        ({"hidden_loss": "l1"}, "hidden_loss"),
        ({"teacher": None, "teacher_logits": "logits/", "hidden_weight": 1.0}, "needs the online `teacher`"),
        # strict fields: no lax coercion of strings
        ({"temperature": "2"}, "distill.temperature"),
        ({"teacher_load_in_4bit": "yes"}, "distill.teacher_load_in_4bit"),
        ({"temperature": 1e6}, "distill.temperature"),
        # settings that do nothing with this teacher source or divergence
        ({"topk": 8}, "distill.topk has no effect with an online teacher"),
        ({"topk_tail": "renormalize"}, "distill.topk_tail has no effect"),
        ({"beta": 0.3}, "distill.beta has no effect with divergence 'forward_kl'"),
        ({"divergence": "jsd", "skew": 0.2}, "distill.skew has no effect"),
        ({"teacher": None, "teacher_logits": "logits/", "teacher_dtype": "float32"}, "distill.teacher_dtype has no effect with an offline"),
    ],
)
def test_bad_configs_name_the_key(distill, needle, capsys):
    assert needle in setup_error(base_cfg(**distill), capsys)


def test_settings_with_an_effect_are_kept():
    cfg = axolotl_validate(base_cfg(divergence="jsd", beta=0.3, temperature=2))  # an int is a valid float
    assert cfg["distill"]["beta"] == 0.3 and cfg["distill"]["temperature"] == 2.0
    DistillConfig.model_validate(dict(cfg["distill"]))  # the loader's filled-in block validates again


@pytest.mark.parametrize("key", ["distil", "distillation", "Distill", "distill_config"])
def test_misspelt_block_is_refused(key, capsys):
    cfg = base_cfg()
    cfg[key] = cfg.pop("distill")
    line = setup_error(cfg, capsys)
    assert f"`{key}:`" in line and "no `distill:` block" in line


def test_missing_block_and_stray_near_miss(capsys):
    cfg = base_cfg()
    del cfg["distill"]
    assert "no `distill:` block" in setup_error(cfg, capsys)
    assert "`distillation:`" in setup_error({**base_cfg(), "distillation": {"temperature": 2.0}}, capsys)


@pytest.mark.parametrize(
    "engine, placement, world, error",
    [
        ({"fsdp_config": {"fsdp_offload_params": False}}, "replicate", "2", "FSDP1"),
        ({"fsdp": ["full_shard", "auto_wrap"]}, "replicate", "2", "`fsdp_version: 2`"),
        ({}, "shard", "1", "this run has one"),
        ({"deepspeed": "ZERO3_FILE"}, "shard", "2", "not available under DeepSpeed"),
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}, "device_map", "2", "2 processes"),
        ({"deepspeed": "/no/such/zero3.json"}, "replicate", "1", "not a readable JSON file"),
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}, "distill": {"hidden_weight": 1.0}},
         "replicate", "2", "hidden-state KD runs under DDP only"),
    ],
)
def test_engine_and_teacher_placement_that_cannot_work_are_refused(engine, placement, world, error, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", world)
    zero3 = tmp_path / "zero3.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    engine = {k: str(zero3) if v == "ZERO3_FILE" else v for k, v in engine.items()}
    distill = engine.pop("distill", {})
    line = setup_error({**base_cfg(teacher_placement=placement, **distill), **engine}, capsys)
    assert error in line, line


@pytest.mark.parametrize(
    "engine, placement, world",
    [
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}, "replicate", "2"),
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}, "shard", "2"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "replicate", "2"),
        ({}, "shard", "2"),
        ({}, "device_map", "1"),
    ],
)
def test_sharded_engines_and_placements_that_work_pass_registration(engine, placement, world, monkeypatch):
    from distill_plugin.preflight import check_raw_config

    monkeypatch.setenv("WORLD_SIZE", world)
    config = check_raw_config({**base_cfg(teacher_placement=placement), **engine})
    assert config.teacher_placement == placement


def test_placement_keys_that_have_no_effect_are_refused():
    with pytest.raises(ValueError, match="teacher_device"):
        DistillConfig(teacher="t", teacher_placement="shard", teacher_device="cuda:1")
    with pytest.raises(ValueError, match="quantised"):
        DistillConfig(teacher="t", teacher_placement="shard", teacher_load_in_4bit=True)
    with pytest.raises(ValueError, match="teacher_placement has no effect"):
        DistillConfig(teacher_logits="store", teacher_placement="shard")


def test_no_distill_block_means_no_trainer_and_no_collator():
    """Regression: a collator hook returning (None, None) disabled Axolotl's default collator."""
    from axolotl.utils.dict import DictDefault

    from distill_plugin.plugin import DistillPlugin

    plugin, cfg = DistillPlugin(), DictDefault({"plugins": ["distill_plugin.DistillPlugin"]})
    assert plugin.get_trainer_cls(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg, is_eval=True) is None
    online = DictDefault(base_cfg())
    assert plugin.get_collator_cls_and_kwargs(online) is None
    assert plugin.get_trainer_cls(online).__name__ == "AxolotlDistillTrainer"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_recipe_validates(name, monkeypatch):
    """A recipe or a docs config that no longer validates fails (Axolotl's loader, plugin registered)."""
    launched_like_its_recipe(name, monkeypatch)
    cfg = CONFIGS[name]
    validated = axolotl_validate(cfg)
    if "distill" in cfg:
        DistillConfig.model_validate(dict(validated["distill"]))


PACKING_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("sample_packing")]


@pytest.mark.parametrize("recipe", PACKING_RECIPES, ids=[str(p.relative_to(REPO)) for p in PACKING_RECIPES])
def test_packing_recipes_keep_documents_apart(recipe, monkeypatch):
    """Every recipe that packs uses an attention that respects document boundaries (tests/test_packing.py)."""
    launched_like_its_recipe(str(recipe.relative_to(REPO)), monkeypatch)
    assert axolotl_validate(yaml.safe_load(recipe.read_text()))["attn_decontaminates_packing"]


def test_packing_without_a_safe_attention_is_warned():
    from distill_plugin.preflight import packing_warning

    config = DistillConfig(teacher="t")
    leaky = axolotl_validate({**base_cfg(), "sample_packing": True})
    assert "attend to each other" in packing_warning(leaky, config)
    safe = axolotl_validate({**base_cfg(), "sample_packing": True, "attn_implementation": "sdpa"})
    assert packing_warning(safe, config) is None
    teacher_leaky = DistillConfig(teacher="t", teacher_attn_implementation="xformers")
    assert "teacher_attn_implementation" in packing_warning(safe, teacher_leaky)


def test_r1_recipes_fused_ce_overlong_traces_and_kd_sibling():
    sft_path, kd_path = REPO / "recipes" / "r1_distill_qwen7b.yml", REPO / "recipes" / "r1_distill_qwen7b_topk.yml"
    sft = axolotl_validate(yaml.safe_load(sft_path.read_text()))
    assert sft["cut_cross_entropy"] and "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin" in sft["plugins"]
    assert sft["excess_length_strategy"] == "drop" and sft["sequence_len"] == 32768
    header = sft_path.read_text().split("base_model:")[0]
    for needle in ("24 GB", "80 GB", "16k", "32k", "Qwen2.5-Math-7B", "DROPPED"):
        assert needle in header, needle
    kd_raw = yaml.safe_load(kd_path.read_text())
    kd = axolotl_validate(kd_raw)
    assert kd["distill"]["teacher_logits"] and kd["datasets"] == sft["datasets"] and kd["sequence_len"] == sft["sequence_len"]
    assert f"distill-data logits --config {kd_path.relative_to(REPO)}" in kd_path.read_text()
