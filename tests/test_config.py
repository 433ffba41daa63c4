"""Config validation through Axolotl's own loader, bad-config errors, every recipe in recipes/ and
every YAML snippet in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from distill_plugin.args import DistillConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yml"))


def readme_blocks(lang: str) -> list[str]:
    """The README's fenced code blocks in one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


# The README's YAML snippets are excerpts: validated on top of the keys Axolotl requires to train.
TRAINING_KEYS = {"micro_batch_size": 1, "num_epochs": 1, "learning_rate": 1e-5, "output_dir": "out", "sequence_len": 512}
CONFIGS = {str(p.relative_to(REPO)): yaml.safe_load(p.read_text()) for p in RECIPES}
CONFIGS.update({f"README.md yaml #{i}": {**TRAINING_KEYS, **yaml.safe_load(block)}
                for i, block in enumerate(readme_blocks("yaml"), 1)})


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


@pytest.mark.parametrize(
    "distill,needle",
    [
        ({"divergence": "kl_forward"}, "divergence"),
        ({"kd_weight": -1.0}, "kd_weight"),
        ({"ce_weight": -0.5}, "ce_weight"),
        ({"teacher_load_in_4bit": True, "teacher_load_in_8bit": True}, "teacher_load_in_8bit"),
        ({"teacher": None}, "teacher"),
        ({"temprature": 2.0}, "temprature"),
        ({"beta": 1.5}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "kd_weight"),
        ({"teacher_logits": "logits/"}, "exactly one"),
        ({"hidden_weight": 1.0, "hidden_layers": "uniform:0"}, "hidden_layers"),
        ({"hidden_loss": "l1"}, "hidden_loss"),
        ({"teacher": None, "teacher_logits": "logits/", "hidden_weight": 1.0}, "needs the online `teacher`"),
    ],
)
def test_bad_configs_name_the_key(distill, needle):
    with pytest.raises((ValidationError, ValueError)) as info:
        axolotl_validate(base_cfg(**distill))
    assert needle in str(info.value)


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
def test_every_recipe_validates(name):
    """A recipe or README config that no longer validates fails (Axolotl's loader, plugin registered)."""
    cfg = CONFIGS[name]
    validated = axolotl_validate(cfg)
    if "distill" in cfg:
        DistillConfig.model_validate(dict(validated["distill"]))
