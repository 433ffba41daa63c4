"""The shipped recipes load with Axolotl's own config code, and the tiny twin trains on the
pipeline's export.

Offline validation: `axolotl.cli.config.load_cfg` ends with `normalize_config`, which loads the
model config from `base_model` (a hub download for Qwen/Qwen2.5-7B-Instruct). For the 7B recipe
we therefore run Axolotl's pydantic validation (`axolotl.utils.config.validate_config`) with the
capabilities of the target machine (one bf16 GPU, sm_90) and skip the model-loading steps. The
tiny twin points at a local model, so it goes through the full `load_cfg` path.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml

from dp_helpers import TRAINED, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
R7B = ROOT / "recipes" / "r1_distill_qwen7b.yml"
GPU_CAPS = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_90"}


def _validate(raw: dict):
    import torch
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    return validate_config(DictDefault(copy.deepcopy(raw)), capabilities=GPU_CAPS,
                           env_capabilities={"torch_version": torch.__version__.split("+")[0]})


def test_7b_recipe_validates_with_axolotl_schema():
    raw = yaml.safe_load(R7B.read_text())
    cfg = _validate(raw)
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] and cfg["sample_packing"]
    ds = cfg["datasets"][0]
    assert ds["type"] == "chat_template" and ds["field_messages"] == "messages"
    assert ds["roles_to_train"] == ["assistant"]
    header = R7B.read_text().split("base_model")[0]
    for word in ("Hardware", "Memory", "Time", "Edit first"):
        assert word.lower() in header.lower()
    bad = copy.deepcopy(raw)
    bad["micro_batch_size"] = "one"  # the validation is real: a wrong type is rejected
    with pytest.raises(Exception):
        _validate(bad)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_teacher, tiny_student):
    from data_prep.pipeline import PipelineConfig, run_pipeline

    root = tmp_path_factory.mktemp("recipe")
    prompts = write_jsonl(root / "prompts.jsonl", [{"problem": q, "answer": a} for q, _, a in TRAINED])
    cfg = PipelineConfig.model_validate({
        "input": str(prompts), "workdir": str(root / "work"),
        "generate": {"model": str(tiny_teacher), "sampling": {"n": 4, "max_tokens": 40, "seed": 0}},
        "verify": {"workers": 1},
        "export": {"select": "all_correct", "check_template": str(tiny_student)}})
    rep = run_pipeline(cfg)
    assert rep["stages"]["export"]["template_check"]["ok"]
    return root, Path(rep["output"])


def _tiny_cfg(root: Path, student: Path, train: Path) -> Path:
    """The 7B recipe's tiny twin (distill_plugin.testing.twins) on the pipeline's export; QLoRA kept, so
    the student is the twins' 64-wide one (bitsandbytes' 4-bit CPU kernel); 6 steps, one checkpoint."""
    from distill_plugin.testing.twins import Fixtures, derive_twin

    twin = derive_twin(R7B, Fixtures(student=student, data=train, workdir=root, prepared=root / "prep"), steps=6)
    return twin.write(root / "tiny.yml")


def test_tiny_twin_loads_with_load_cfg(exported, twin_root):
    from axolotl.cli.config import load_cfg

    root, train = exported
    cfg = load_cfg(str(_tiny_cfg(root, twin_root / "student", train)))
    assert cfg.datasets[0]["type"] == "chat_template" and cfg.sample_packing and cfg.adapter == "qlora"
    assert cfg.base_model == str(twin_root / "student")


@pytest.mark.slow
def test_tiny_twin_trains_on_pipeline_output(exported, twin_root):
    """The 7B recipe's twin is trained here, on the pipeline's export (its one run in the suite:
    ``tests/test_e2e_twins.py`` lists it in ``TRAINED_ELSEWHERE``), and keeps the recipe's promises."""
    from twin_runs import check_promises, train_twin

    root, train = exported
    assert len(train.read_text().splitlines()) >= 8
    run = train_twin(R7B, twin_root, root / "twin", data=train, prepared=root / "prep")
    check_promises(R7B, run)  # loss, 4-bit student, adapter (reloaded on the 4-bit base), packing
    assert all(e["loss"] == e["loss"] and e["loss"] > 0 for e in run.logs)
    assert (run.out / f"checkpoint-{run.config['max_steps']}" / "adapter_model.safetensors").exists()
    # the reasoning is in the supervised tokens: decode the prepared labels Axolotl trained on
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(twin_root / "student"))
    (prep,) = [p for p in (root / "prep").iterdir() if p.is_dir()]
    ds = load_from_disk(str(prep))
    supervised = tok.decode([t for t in ds[0]["labels"] if t != -100])
    assert "<think>" in supervised and "</think>" in supervised and "\\boxed{" in supervised
    assert json.loads(train.read_text().splitlines()[0])["messages"][-1]["content"].startswith("<think>")
