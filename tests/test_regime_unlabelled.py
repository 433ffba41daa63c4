"""Regime ``unlabelled`` of the quality benchmark (benchmarks/quality/unlabelled.py): its splits, its
rows' recipes and the one-time build of the pool's trajectories. Fast: no teacher, no student."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distill_plugin.args import DistillConfig
from distill_plugin.demo.recipe import student_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from benchmarks.quality import methods, unlabelled  # noqa: E402
from benchmarks.quality.methods import METHODS, Shared  # noqa: E402
from benchmarks.quality.regimes import REGIMES, write_data  # noqa: E402
from benchmarks.quality.settings import QUICK, Settings  # noqa: E402

POOL_ROWS = ("seq_kd_pool", "fkl_pool", "topk_pool", "gkd_pool")
SMALL = replace(REGIMES["unlabelled"].settings, n_train=20, n_valid=10, n_heldout=10, n_teacher_train=60, n_pool=40)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_splits_are_disjoint_and_the_pool_has_no_answers(tmp_path):
    """Disjoint by problem id but for the teacher's labelled set, whose first rows are the students'."""
    sh = Shared(tmp_path)
    write_data(sh, SMALL, REGIMES["unlabelled"])
    splits = {name: read(sh.data(name)) for name in ("train", "valid", "heldout", "teacher_train", "pool")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "valid": 10, "heldout": 10, "teacher_train": 60,
                                                      "pool": 40}
    assert splits["teacher_train"][:20] == splits["train"]
    ids = [r["id"] for name, rows in splits.items() if name != "train" for r in rows]
    assert len(ids) == len(set(ids)) == 120
    for r in splits["pool"]:
        assert set(r) == {"id", "prompt"}
        a, b = map(int, re.fullmatch(r"What is (\d{3})\+(\d{3})\?", r["prompt"]).groups())
        assert r["id"] == f"add-{a}-{b}"
    assert all("answer" in r and len(r["messages"]) == 2 for r in splits["teacher_train"] + splits["train"])


def test_the_pool_leaves_the_other_splits_as_they_were(tmp_path):
    """Adding a pool and a teacher sample to an addition regime does not move train / valid / held-out."""
    base = replace(SMALL, n_teacher_train=0, n_pool=0)
    write_data(Shared(tmp_path / "a"), base, REGIMES["certain"])
    write_data(Shared(tmp_path / "b"), SMALL, REGIMES["unlabelled"])
    for split in ("train", "valid", "heldout"):
        assert Shared(tmp_path / "a").data(split).read_bytes() == Shared(tmp_path / "b").data(split).read_bytes()
    assert not Shared(tmp_path / "a").data("pool").exists()


def test_the_teacher_sees_the_certain_regimes_training_split(tmp_path):
    """At the regimes' sizes the unlabelled teacher's rows are the certain regime's, so ``--regime all``
    trains one addition teacher."""
    from benchmarks.quality.runner import TEACHER_KEYS

    certain, pool = REGIMES["certain"].settings, REGIMES["unlabelled"].settings
    assert all(getattr(certain, k) == getattr(pool, k) for k in (*TEACHER_KEYS, "digits", "n_valid", "n_heldout"))
    assert pool.n_teacher_train == certain.n_train
    small = replace(SMALL, n_teacher_train=SMALL.n_train * 3)
    write_data(Shared(tmp_path / "a"), replace(small, n_train=small.n_teacher_train, n_pool=0), REGIMES["certain"])
    write_data(Shared(tmp_path / "b"), small, REGIMES["unlabelled"])
    assert Shared(tmp_path / "a").data("train").read_bytes() == Shared(tmp_path / "b").data("teacher_train").read_bytes()


def test_regime_rows_and_sizes():
    r = REGIMES["unlabelled"]
    assert r.methods[0] == "sft" and "seq_kd_pool" in r.methods and set(r.methods[1:]) <= set(POOL_ROWS)
    assert r.data == "addition" and r.expectation
    s = r.settings
    assert s.n_train == 200 and s.n_pool >= 5 * s.n_train and s.n_teacher_train >= s.n_train
    assert s.seqkd_samples >= 3  # a vote needs samples to agree
    assert r.quick.n_pool and r.quick.n_teacher_train


@pytest.mark.parametrize("name", POOL_ROWS)
def test_pool_rows_train_on_the_exported_trajectories(name, tmp_path):
    sh = Shared(tmp_path)
    m = METHODS[name]
    assert m.data(sh) == sh.work("seq_kd_pool") / "train.jsonl" and m.baseline == "sft"
    assert set(unlabelled.POOL_KEYS) <= set(m.prepare_keys)
    block = m.distill(sh, QUICK)
    path = student_recipe(tmp_path / "r.yml", QUICK, base_model=tmp_path / "init", data=m.data(sh),
                          output_dir=tmp_path / "out", prepared=tmp_path / "prepared", distill=block)
    cfg = yaml.safe_load(path.read_text())
    expected = {"seq_kd_pool": None, "fkl_pool": ("forward_kl", None), "gkd_pool": ("jsd", 0.5),
                "topk_pool": ("forward_kl", None)}[name]
    if expected is None:
        assert block is None and "distill" not in cfg
        return
    DistillConfig(**cfg["distill"])
    assert (block["divergence"], block.get("on_policy_fraction")) == expected
    if name == "topk_pool":
        assert block["teacher_logits"] == str(sh.work("topk_pool") / "store") and "teacher" not in block
    else:
        assert block["teacher"] == str(sh.teacher)


def fake_trajectories(calls: list):
    """Stands in for the real CLI pipeline: records its call, takes a while, writes what it writes."""

    def run(sh, s, work, prompts, max_tokens, majority=False):
        calls.append({"prompts": prompts, "max_tokens": max_tokens, "majority": majority})
        time.sleep(0.3)
        (work / "ver").mkdir()
        (work / "ver" / "verified.jsonl").write_text(
            json.dumps({"id": "a", "pseudo_answer": "3"}) + "\n" + json.dumps({"id": "b", "pseudo_answer": None}) + "\n")
        (work / "train.jsonl").write_text(json.dumps({"messages": [], "id": "a"}) + "\n")
        return {"generate": 1.0}

    return run


def test_pool_trajectories_are_built_once_for_every_pool_row(tmp_path, monkeypatch):
    """prepare_all builds several methods at once in threads: the first pool row builds the
    trajectories (majority-verified, over the pool split), the others wait and reuse them; a change
    of a setting they depend on rebuilds them."""
    calls, captured = [], []
    monkeypatch.setattr(methods, "trajectories", fake_trajectories(calls))
    monkeypatch.setattr(methods, "capture_topk", lambda sh, s, work, data: captured.append((work, data)))
    sh = Shared(tmp_path)
    s = REGIMES["unlabelled"].settings
    threads = [threading.Thread(target=METHODS[name].prepare, args=(sh, s)) for name in POOL_ROWS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and calls[0]["majority"] and calls[0]["prompts"] == sh.data("pool")
    assert calls[0]["max_tokens"] == methods.sampled_answer_budget(s)
    assert captured == [(sh.work("topk_pool"), unlabelled.pool_data(sh))]
    marker = json.loads((sh.work("seq_kd_pool") / "exported.json").read_text())
    assert marker["kept"] == {"prompts": 2, "majority": 1, "exported": 1}
    assert METHODS["seq_kd_pool"].prepare(sh, s) == 1.0 and METHODS["fkl_pool"].prepare(sh, s) == 0.0
    assert len(calls) == 1  # seq_kd_pool reports the pipeline's seconds, the rows that reuse it none
    METHODS["fkl_pool"].prepare(sh, replace(s, seqkd_samples=s.seqkd_samples + 1))
    assert len(calls) == 2


def test_existing_rows_keep_their_data(tmp_path):
    """The certain regime's seq_kd and topk still train on (and capture over) the labelled split."""
    sh = Shared(tmp_path)
    assert METHODS["seq_kd"].data(sh) == sh.work("seq_kd") / "train.jsonl"
    assert METHODS["topk"].distill(sh, Settings())["teacher_logits"] == str(sh.work("topk") / "store")


def test_the_pool_size_keys_the_shared_folder_only_where_there_is_a_pool(tmp_path, monkeypatch):
    """A regime without a pool writes the manifest key it always did (its teacher is reused); a
    regime with one keys on ``n_pool`` (another pool size rebuilds the teacher and the data)."""
    from rich.console import Console

    from benchmarks.quality import runner

    monkeypatch.setattr(runner, "write_data", lambda sh, s, regime: None)
    monkeypatch.setattr(runner, "train_teacher", lambda sh, s, console: 1.0)
    monkeypatch.setattr(runner, "teacher_key", lambda sh, s: "the teacher")
    for name, has_pool in (("certain", False), ("unlabelled", True)):
        sh = Shared(tmp_path / name)
        key = runner.build_shared(sh, REGIMES[name].settings, REGIMES[name], Console(quiet=True))["settings"]
        assert set(key) == {"data", *runner.SHARED_KEYS} | ({"n_pool"} if has_pool else set())
