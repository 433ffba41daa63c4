"""The embedded demo, ``--quick``: teacher, SFT and KD students through axolotl.cli.train, the table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow
ENV = {
    **os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "COLUMNS": "120",
}


def test_quick_demo(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "distill_plugin.demo", "--out", str(out), "--quick"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "held-out two-digit addition" in output
    for label in ("teacher", "student SFT", "student KD"):
        assert label in output

    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "student SFT", "student KD"]
    for row in rows.values():
        assert 0.0 <= row["exact_match"] <= 1.0
        assert math.isfinite(row["heldout_ce"]) and row["heldout_ce"] > 0
    for name in ("student SFT", "student KD"):
        assert math.isfinite(rows[name]["kl_to_teacher"]) and rows[name]["kl_to_teacher"] >= 0
    assert rows["teacher"]["kl_to_teacher"] is None
    # The two students: same architecture and steps; the teacher is the larger model.
    assert rows["student SFT"]["params"] == rows["student KD"]["params"] < rows["teacher"]["params"]
    assert rows["student SFT"]["train_steps"] == rows["student KD"]["train_steps"]

    # Checkpoints: the teacher and both students load as saved models.
    for sub in ("teacher", "sft", "kd"):
        assert (out / sub / "config.json").exists()
        assert list((out / sub).glob("*.safetensors")), sub
    # The recipes differ only by the plugin and its distill block.
    sft = yaml.safe_load((out / "recipes" / "sft.yml").read_text())
    kd = yaml.safe_load((out / "recipes" / "kd.yml").read_text())
    assert "distill" not in sft and "plugins" not in sft
    assert kd["distill"]["teacher"] == str(out / "teacher")
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in ("distill", "plugins", "output_dir", "dataset_prepared_path")}
    assert strip(sft) == strip(kd)
    # Held-out problems are disjoint from the training problems.
    ids = lambda name: {json.loads(line)["id"] for line in (out / "data" / name).read_text().splitlines()}
    assert not ids("train.jsonl") & ids("heldout.jsonl")
