"""The embedded demo, ``--quick`` with two seeds, run from an *installed* wheel (not the checkout):
the source's teacher, SFT and KD students through axolotl.cli.train, the per-seed results and the
seeds' summary (mean ± standard error, the paired KD − SFT difference)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "COLUMNS": "200",
    "AXOLOTL_DATASET_NUM_PROC": "1",  # no tokenisation process pools on tiny data (tests/axolotl_runs.py)
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel (from a copy of its sources) and installed into a bare folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for path in REPO.iterdir():  # pyproject.toml, README.md, any licence file it names
        if path.is_file():
            shutil.copy(path, src / path.name)
    for pkg in ("distill_plugin", "data_prep"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, cwd=root, timeout=600)
    (wheel,) = (root / "dist").glob("distill_plugin-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=600)
    return site


def test_quick_demo_from_an_installed_wheel(tmp_path, installed):
    env = {**ENV, "PYTHONPATH": str(installed)}  # the wheel's copy, never the checkout
    where = subprocess.run([sys.executable, "-c", "import distill_plugin; print(distill_plugin.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed), where
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "distill_plugin.demo", "--out", str(out), "--quick", "--seed", "0", "--seed", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "a source with many right answers" in output
    for label in ("teacher", "student SFT", "student KD"):
        assert label in output

    for seed in (0, 1):
        check_seed_output(out, seed)

    # The seeds' summary: printed, and equal to the per-seed numbers it summarises.
    summary_file = json.loads((out / "results.json").read_text())
    assert summary_file["seeds"] == [0, 1]
    runs = [json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert summary_file["runs"] == runs
    summary = summary_file["summary"]
    assert "2 seeds (0, 1): mean ± se [min–max]" in output
    for i, (model, stats) in enumerate(summary["models"].items()):
        values = [r["rows"][i]["kl_to_source"] for r in runs]
        kl = stats["kl_to_source"]
        assert kl["mean"] == pytest.approx(sum(values) / 2)
        assert kl["se"] == pytest.approx(abs(values[0] - values[1]) / 2)
        assert (kl["min"], kl["max"]) == (min(values), max(values))
        assert f"{kl['mean']:.4f} ± {kl['se']:.4f}" in output, model
    diffs = [r["rows"][2]["kl_to_source"] - r["rows"][1]["kl_to_source"] for r in runs]
    assert summary["kd_minus_sft"] == pytest.approx(diffs)
    assert f"paired mean {sum(diffs) / 2:+.4f}" in output


def check_seed_output(out: Path, seed: int) -> None:
    results = json.loads((out / f"seed_{seed}" / "results.json").read_text())
    assert results["settings"]["seed"] == seed
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "student SFT", "student KD"]
    for row in rows.values():
        assert math.isfinite(row["kl_to_source"]) and row["kl_to_source"] >= 0
        assert 0.0 <= row["validity"] <= 1.0 and row["coverage"] >= 0
        assert math.isfinite(row["heldout_ce"]) and row["heldout_ce"] > 0
    for name in ("student SFT", "student KD"):
        assert math.isfinite(rows[name]["kl_to_teacher"]) and rows[name]["kl_to_teacher"] >= 0
    assert rows["teacher"]["kl_to_teacher"] is None
    # The two students: same architecture and steps; the teacher is the larger model.
    assert rows["student SFT"]["params"] == rows["student KD"]["params"] < rows["teacher"]["params"]
    assert rows["student SFT"]["train_steps"] == rows["student KD"]["train_steps"]

    # Checkpoints: the shared teacher and both students load as saved models.
    for sub in (out / "shared" / "teacher", out / f"seed_{seed}" / "sft", out / f"seed_{seed}" / "kd"):
        assert (sub / "config.json").exists()
        assert list(sub.glob("*.safetensors")), sub
    # The recipes differ only by the plugin and its distill block.
    recipes = out / f"seed_{seed}" / "recipes"
    sft = yaml.safe_load((recipes / "sft.yml").read_text())
    kd = yaml.safe_load((recipes / "kd.yml").read_text())
    assert "distill" not in sft and "plugins" not in sft
    assert kd["distill"]["teacher"] == str(out / "shared" / "teacher") and kd["seed"] == seed
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in ("distill", "plugins", "output_dir", "dataset_prepared_path")}
    assert strip(sft) == strip(kd)
    # Each seed's student sample is its own draw of the source.
    answers = lambda path: [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    assert answers(out / f"seed_{seed}" / "data" / "train.jsonl") != answers(out / f"seed_{1 - seed}" / "data" / "train.jsonl")
