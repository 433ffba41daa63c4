"""Axolotl trains on the Parquet shards of ``distill-data export`` (train shards as ``datasets:``,
eval shards as ``test_datasets:``), through ``tests/configs/open_sft_parquet.yml``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from data_prep.export import ExportConfig, export
from dp_helpers import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "tests" / "configs" / "open_sft_parquet.yml"


def open_rows(n: int = 40) -> list[dict]:
    gens = lambda i: [{"text": f"Answer {i}: colour {c}.", "reasoning": "", "content": f"Answer {i}: colour {c}.",  # noqa: E731
                       "think_closed": False, "finish_reason": "stop", "score": float(s),
                       "judge": {"status": "ok", "reasoning": "fine"}} for c, s in (("red", 6), ("blue", 8))]
    return [{"id": f"q{i}", "prompt": f"Name a colour for item {i}.", "generations": gens(i)} for i in range(n)]


def recipe_for(root: Path, student: Path, data: Path) -> Path:
    raw = yaml.safe_load(RECIPE.read_text())
    raw.update(base_model=str(student), output_dir=str(root / "out"), dataset_prepared_path=str(root / "prep"))
    for block, split in ((raw["datasets"][0], "train"), (raw["test_datasets"][0], "eval")):
        block.update(path=str(data), data_files=str(data / f"{split}-*.parquet"))
    path = root / "open.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tiny_recipe_loads_with_load_cfg(tmp_path, tiny_student):
    from axolotl.cli.config import load_cfg

    cfg = load_cfg(str(recipe_for(tmp_path, tiny_student, tmp_path / "data")))
    assert cfg.datasets[0]["ds_type"] == "parquet" and cfg.test_datasets[0]["data_files"].endswith("eval-*.parquet")


@pytest.mark.slow
def test_axolotl_trains_on_parquet_shards(tmp_path, tiny_student):
    from axolotl_runs import run_axolotl_train

    src = write_jsonl(tmp_path / "kept.jsonl", open_rows())
    rep = export(src, tmp_path / "data", ExportConfig(select="highest_score", split=0.2, format="parquet",
                                                      shard_size="2KB"))
    splits = rep.extra["splits"]
    assert len(splits["train"]["files"]) >= 2 and splits["eval"]["rows"] >= 1
    output, logs = run_axolotl_train(recipe_for(tmp_path, tiny_student, tmp_path / "data"), tmp_path, timeout=900)
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) >= 3 and all(x == x and x > 0 for x in losses)
    evals = [float(x) for x in re.findall(r"'eval_loss': '?([0-9.]+)", output)]
    assert evals and all(x > 0 for x in evals), output[-3000:]  # the eval shards were evaluated on
    assert (tmp_path / "out" / "checkpoint-4" / "model.safetensors").exists()
    # what Axolotl trained on is every train shard's rows, with the highest-scored answer supervised
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_student))
    prepared = [datasets.load_from_disk(str(p)) for p in (tmp_path / "prep").iterdir() if p.is_dir()]
    assert sorted(d.num_rows for d in prepared) == sorted([splits["train"]["rows"], splits["eval"]["rows"]])
    supervised = tok.decode([t for t in prepared[0][0]["labels"] if t != -100])
    assert "colour blue." in supervised and "red" not in supervised
