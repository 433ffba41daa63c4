"""The quality benchmark (benchmarks/bench_quality.py): its task, its registry, its statistics, and one
``--quick`` run end to end (teacher, ``distill-data`` preparation, students through axolotl.cli.train)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill_plugin.args import DistillConfig
from distill_plugin.demo.methods import METHODS, Shared
from distill_plugin.demo.recipe import student_recipe
from distill_plugin.demo.quality import QUICK, Settings, summarise, with_overrides
from distill_plugin.demo.task import final_answer, make_example, working

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("digits", [2, 3, 4])
def test_working_reconstructs_the_answer(digits):
    """The answer is the columns' last digits (ones first) with the last column's full sum in front."""
    rng = random.Random(digits)
    for _ in range(200):
        row = make_example(rng, digits=digits, r1_layout=True)
        a, b = map(int, re.match(r"What is (\d+)\+(\d+)\?", row["messages"][0]["content"]).groups())
        steps = working(a, b, digits).split("; ")
        assert len(steps) == digits
        sums = [int(re.search(r"=(\d+)", step).group(1)) for step in steps]
        digits_of = "".join(str(v % 10) for v in reversed(sums[:-1]))
        assert int(f"{sums[-1]}{digits_of}") == a + b == int(row["answer"])
        assert [", carry 1" in step for step in steps[:-1]] == [v >= 10 for v in sums[:-1]]
        assert "</think>\n\n" in row["messages"][1]["content"]
        assert final_answer(row["messages"][1]["content"]) == row["answer"]


def test_two_digit_working_is_the_demos():
    assert working(47, 38) == "7+8=15, carry 1; 4+3+1=8"
    assert working(17, 21) == "7+1=8; 1+2=3"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_methods_recipe_has_a_valid_distill_block(name, tmp_path):
    """The block as written into the student's recipe (merged over the base recipe's)."""
    sh = Shared(tmp_path)
    path = student_recipe(tmp_path / "r.yml", QUICK, base_model=tmp_path / "init", data=METHODS[name].data(sh),
                          output_dir=tmp_path / "out", prepared=tmp_path / "prepared", distill=METHODS[name].distill(sh, QUICK))
    cfg = yaml.safe_load(path.read_text())
    if METHODS[name].distill(sh, QUICK) is None:
        assert "distill" not in cfg and "plugins" not in cfg
    else:
        DistillConfig(**cfg["distill"])
    assert cfg["datasets"][0]["path"].endswith(".jsonl")


def test_gap_closed_per_seed_against_that_seeds_sft():
    teacher = {"exact_match": 0.9}
    rows = [{"seed": 1, "row": "sft", "exact_match": 0.5}, {"seed": 2, "row": "sft", "exact_match": 0.7},
            {"seed": 1, "row": "kd", "exact_match": 0.7}, {"seed": 2, "row": "kd", "exact_match": 0.6}]
    for r in rows:
        r.update(kl_to_teacher=0.1, heldout_ce=0.2, train_seconds=3.0)
    summary = summarise(teacher, rows, ["sft", "kd"])
    gaps = [(0.7 - 0.5) / (0.9 - 0.5), (0.6 - 0.7) / (0.9 - 0.7)]
    assert summary["kd"]["gap_closed"]["mean"] == pytest.approx(sum(gaps) / 2)
    sd = abs(gaps[0] - gaps[1]) / math.sqrt(2)
    assert summary["kd"]["gap_closed"]["se"] == pytest.approx(sd / math.sqrt(2))
    assert summary["sft"]["gap_closed"]["mean"] == 0
    assert summary["kd"]["exact_match"]["mean"] == pytest.approx(0.65)


def test_overrides_keep_types_and_refuse_unknown_keys():
    s = with_overrides(Settings(), ["temperature=2", "student_steps=10"])
    assert s.temperature == 2.0 and isinstance(s.temperature, float) and s.student_steps == 10
    with pytest.raises(SystemExit, match="tempreature"):
        with_overrides(Settings(), ["tempreature=2"])


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    """``--quick``, two methods (sequence-level KD through the distill-data CLI, offline top-k through
    ``distill-data logits``) plus the SFT baseline, one seed: the table is written with finite numbers."""
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_quality.py"), "--quick", "--out", str(out),
                           "--method", "seq_kd", "--method", "topk", "--seed", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    check_quick_output(out, output)


def check_quick_output(out: Path, output: str) -> None:
    """What ``--quick --method seq_kd --method topk --seed 1`` must have written to ``out`` and printed."""
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]) == ["sft", "seq_kd", "topk"]
    assert [(r["seed"], r["row"]) for r in results["runs"]] == [(1, "sft"), (1, "seq_kd"), (1, "topk")]
    for r in results["runs"]:
        assert 0 <= r["exact_match"] <= 1 and r["train_seconds"] > 0
        assert math.isfinite(r["kl_to_teacher"]) and r["kl_to_teacher"] >= 0 and math.isfinite(r["heldout_ce"])
    assert 0 <= results["teacher"]["exact_match"] <= 1
    assert set(results["prepare_seconds"]) == {"seq_kd", "topk"}
    table = (out / "results.md").read_text()
    for label in ("teacher", "SFT (ground truth)", "sequence-level KD", "offline top-k KD"):
        assert label in table and label in output
    # Students differ only by their data file and distill block; every student trained its steps.
    recipes = {n: yaml.safe_load((out / "seed_1" / "recipes" / f"{n}.yml").read_text()) for n in ("sft", "seq_kd", "topk")}
    strip = lambda c: {k: v for k, v in c.items() if k not in ("plugins", "distill", "datasets", "output_dir", "dataset_prepared_path")}
    assert strip(recipes["sft"]) == strip(recipes["seq_kd"]) == strip(recipes["topk"])
    assert recipes["seq_kd"]["datasets"][0]["path"].endswith("shared/seq_kd/train.jsonl")
    assert recipes["topk"]["distill"]["teacher_logits"].endswith("shared/topk/store")
    # The teacher's trajectories: the training prompts unchanged (no R1 suffix), the assistant turn in
    # the ground truth's layout (--quick's 30-step teacher writes garbage in between; it keeps wrong ones).
    trajectories = [json.loads(line) for line in (out / "shared" / "seq_kd" / "train.jsonl").read_text().splitlines()]
    prompts = {json.loads(line)["messages"][0]["content"] for line in (out / "shared" / "data" / "train.jsonl").open()}
    assert trajectories
    for row in trajectories:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] in prompts
        assert row["messages"][1]["content"].startswith("<think>\n") and "\n</think>\n\n" in row["messages"][1]["content"]
    for name in ("sft", "seq_kd", "topk"):
        logged = (out / "logs" / f"s1_{name}.log").read_text()
        assert len(re.findall(r"\{'loss': ", logged)) == QUICK.student_steps, name
