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
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distill_plugin.args import DistillConfig
from distill_plugin.demo.recipe import student_recipe
from distill_plugin.testing.addition import final_answer, make_example, make_split, working

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from bench_quality import method_rows  # noqa: E402
from benchmarks.quality.methods import METHODS, TOKENIZERS, Shared  # noqa: E402
from benchmarks.quality.regimes import CERTAIN_METRICS, REGIMES  # noqa: E402
from benchmarks.quality.runner import baseline_rows, student_runs  # noqa: E402
from benchmarks.quality.settings import QUICK, Settings, with_overrides  # noqa: E402
from benchmarks.quality.table import summarise  # noqa: E402


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
                          output_dir=tmp_path / "out", prepared=tmp_path / "prepared", distill=METHODS[name].distill(sh, QUICK),
                          extra=METHODS[name].recipe)
    cfg = yaml.safe_load(path.read_text())
    if METHODS[name].distill(sh, QUICK) is None:
        assert "distill" not in cfg and "plugins" not in cfg
    else:
        DistillConfig(**cfg["distill"])
    assert cfg["datasets"][0]["path"].endswith(".jsonl")
    assert all(cfg[k] == v for k, v in METHODS[name].recipe.items())
    if METHODS[name].tokenizer != "a" and "distill" in cfg:  # the cross-tokenizer rows: the recipe's weights
        assert (cfg["distill"]["kd_weight"], cfg["distill"]["ce_weight"]) == (QUICK.cross_kd_weight, QUICK.cross_ce_weight)
        assert QUICK.cross_ce_weight > 0 and QUICK.cross_ce_weight != QUICK.ce_weight


def test_cross_tokenizer_rows_use_the_recipes_mode_and_weights():
    """The table's ULD row is ``recipes/uld_llama_to_qwen.yml``'s loss: same mode, same weights."""
    recipe = yaml.safe_load((REPO / "recipes" / "uld_llama_to_qwen.yml").read_text())["distill"]
    block = METHODS["uld"].distill(Shared(Path("out")), Settings())
    for key in ("cross_tokenizer", "kd_weight", "ce_weight", "temperature"):
        assert block[key] == recipe[key], key
    assert METHODS["uld_hybrid"].distill(Shared(Path("out")), with_overrides(Settings(), ["cross_uld_weight=0"]))["uld_weight"] == 0


def test_gap_closed_per_seed_against_that_seeds_sft():
    teacher = {"exact_match": 0.9}
    rows = [{"seed": 1, "row": "sft", "exact_match": 0.5}, {"seed": 2, "row": "sft", "exact_match": 0.7},
            {"seed": 1, "row": "kd", "exact_match": 0.7}, {"seed": 2, "row": "kd", "exact_match": 0.6}]
    for r in rows:
        r.update(kl_to_teacher=0.1, heldout_ce=0.2, train_seconds=3.0)
    summary = summarise(teacher, rows, ["sft", "kd"], CERTAIN_METRICS)
    gaps = [(0.7 - 0.5) / (0.9 - 0.5), (0.6 - 0.7) / (0.9 - 0.7)]
    assert summary["kd"]["gap_closed"]["mean"] == pytest.approx(sum(gaps) / 2)
    sd = abs(gaps[0] - gaps[1]) / math.sqrt(2)
    assert summary["kd"]["gap_closed"]["se"] == pytest.approx(sd / math.sqrt(2))
    assert summary["sft"]["gap_closed"]["mean"] == 0
    assert summary["kd"]["exact_match"]["mean"] == pytest.approx(0.65)


def test_gap_closed_against_the_rows_declared_baseline():
    """A tokenizer-B row's gap is measured from SFT on tokenizer B (same seed), not from the tokenizer-A
    SFT; its KL is undefined (None) and summarised as None, not as a number."""
    teacher = {"exact_match": 0.9}
    rows = [{"seed": 1, "row": "sft", "exact_match": 0.5, "kl_to_teacher": 0.1},
            {"seed": 1, "row": "sft_b", "exact_match": 0.3, "kl_to_teacher": None},
            {"seed": 1, "row": "uld_hybrid", "exact_match": 0.6, "kl_to_teacher": None},
            {"seed": 2, "row": "sft", "exact_match": 0.6, "kl_to_teacher": 0.1},
            {"seed": 2, "row": "sft_b", "exact_match": 0.5, "kl_to_teacher": None},
            {"seed": 2, "row": "uld_hybrid", "exact_match": 0.5, "kl_to_teacher": None}]
    for r in rows:
        r.update(heldout_ce=0.2, train_seconds=3.0)
    names = ["sft", "sft_b", "uld_hybrid"]
    baselines = baseline_rows({name: (name, QUICK) for name in names})
    assert baselines == {"sft": "sft", "sft_b": "sft_b", "uld_hybrid": "sft_b"}
    summary = summarise(teacher, rows, names, CERTAIN_METRICS, baselines)
    assert summary["uld_hybrid"]["gap_closed"]["mean"] == pytest.approx(((0.6 - 0.3) / 0.6 + 0) / 2)
    assert summary["uld_hybrid"]["baseline"] == "sft_b" and summary["sft_b"]["gap_closed"]["mean"] == 0
    assert summary["uld_hybrid"]["kl_to_teacher"] is None and summary["sft_b"]["kl_to_teacher"] is None
    assert summary["sft"]["kl_to_teacher"]["mean"] == pytest.approx(0.1)
    # Against the tokenizer-A SFT it would read differently: the declared baseline is what is used.
    assert summarise(teacher, rows, names, CERTAIN_METRICS)["uld_hybrid"]["gap_closed"]["mean"] != summary["uld_hybrid"]["gap_closed"]["mean"]


def test_rows_paired_against_other_rows_seed_by_seed():
    """``--against``: each row's per-seed difference with another row (the store rows against online KD
    and top-64), on the same metric as its baseline difference; the markdown has a column per row."""
    from benchmarks.quality.table import markdown

    teacher = {"exact_match": 0.9}
    rows = [{"seed": seed, "row": row, "exact_match": value, "kl_to_teacher": 0.1, "heldout_ce": 0.2, "train_seconds": 3.0}
            for seed, row, value in ((1, "sft", 0.5), (1, "fkl", 0.7), (1, "sampled", 0.65),
                                     (2, "sft", 0.6), (2, "fkl", 0.8), (2, "sampled", 0.8))]
    names = ["sft", "fkl", "sampled"]
    summary = summarise(teacher, rows, names, CERTAIN_METRICS, against=("fkl",))
    assert summary["sampled"]["versus"]["fkl"]["mean"] == pytest.approx((-0.05 + 0.0) / 2)
    assert summary["sampled"]["versus"]["fkl"]["se"] == pytest.approx(0.025)
    assert summary["fkl"]["versus"]["fkl"] is None and summary["sft"]["versus"]["fkl"]["mean"] == pytest.approx(-0.2)
    results = {"settings": vars(QUICK) | {"warm_steps": 0}, "seeds": [1, 2], "teacher": teacher | {"params": 10},
               "metrics": [vars(m) for m in CERTAIN_METRICS], "title": "t", "split": "heldout", "split_size": 2,
               "expectation": "e", "summary": summary, "prepare_seconds": {}, "against": ["fkl"], "jobs": 1,
               "threads": 1, "wall_seconds": 1.0, "teacher_seconds": 1.0, "student_params": {"a": 5},
               "rows": {n: {"label": n, "method": n} for n in names}}
    text = markdown(results)
    assert "| method | Δ vs fkl |" in text and "| sampled | -2.5 ± 2.5 |" in text


def test_rows_bring_their_baselines():
    assert list(method_rows(["uld_hybrid"], QUICK)) == ["sft_b", "uld_hybrid"]
    assert list(method_rows(["fkl", "uld", "uld_hybrid"], QUICK)) == ["sft", "sft_b", "fkl", "uld", "uld_hybrid"]
    assert list(method_rows(["sft_b", "sft", "topk"], QUICK)) == ["sft_b", "sft", "topk"]
    with pytest.raises(SystemExit, match="'sft_b'"):
        baseline_rows({"uld": ("uld", QUICK)})


def test_one_student_init_per_size_and_tokenizer(tmp_path):
    """``student_runs``: rows on the same tokenizer share one init; the tokenizer-B rows get one with
    tokenizer B's vocabulary (a Llama, which keeps that tokenizer on reload)."""
    from transformers import AutoConfig, AutoTokenizer

    sh = Shared(tmp_path / "shared")
    runs = student_runs(tmp_path, sh, {m: (m, QUICK) for m in ("sft", "fkl", "sft_b", "uld_hybrid")}, seed=3)
    recipes = {row: yaml.safe_load(recipe.read_text()) for row, recipe, _ in runs.values()}
    inits = {row: Path(cfg["base_model"]) for row, cfg in recipes.items()}
    assert inits["sft"] == inits["fkl"] != inits["sft_b"] == inits["uld_hybrid"]
    assert len(list((tmp_path / "seed_3").glob("student_init_*"))) == 2
    assert len(AutoTokenizer.from_pretrained(inits["sft"])) == len(TOKENIZERS["a"].build())
    tok_b = AutoTokenizer.from_pretrained(inits["sft_b"])
    assert len(tok_b) == len(TOKENIZERS["b"].build()) != len(TOKENIZERS["a"].build())
    assert tok_b.chat_template == TOKENIZERS["b"].build().chat_template
    assert AutoConfig.from_pretrained(inits["sft_b"]).model_type == "llama"
    assert recipes["uld_hybrid"]["distill"]["cross_tokenizer"] == "hybrid" and "distill" not in recipes["sft_b"]
    assert recipes["uld_hybrid"]["distill"]["teacher"] == str(sh.teacher)


def test_warm_students_start_from_sft_steps_on_their_sample(tmp_path):
    """The warm regime: every row of a seed starts from one init that took ``warm_steps`` SFT steps on
    the train split (its loss on that split below the random init's), seeded like the random one."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.quality.regimes import write_data
    from distill_plugin.demo.core import encode
    from distill_plugin.evaluation import teacher_fit

    regime = REGIMES["warm"]
    sh = Shared(tmp_path / "shared")
    write_data(sh, regime.quick, regime)
    rows = {m: (m, replace(regime.quick, warm_steps=20)) for m in ("sft", "rkl", "gkd")}
    runs = student_runs(tmp_path, sh, rows, seed=2)
    inits = {Path(yaml.safe_load(recipe.read_text())["base_model"]) for _, recipe, _ in runs.values()}
    (warm,) = inits
    assert warm.name.endswith("_warm20")
    cold = student_runs(tmp_path / "cold", sh, {"sft": ("sft", replace(regime.quick, warm_steps=0))}, seed=2)
    (cold,) = {Path(yaml.safe_load(recipe.read_text())["base_model"]) for _, recipe, _ in cold.values()}
    tok = TOKENIZERS["a"].build()
    train = [encode(tok, json.loads(line)) for line in sh.data("train").read_text().splitlines()]
    ce = {name: teacher_fit(AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval(),
                            [(e.prompt_ids, e.target_ids) for e in train], None, pad_id=tok.pad_token_id).student_ce
          for name, path in (("warm", warm), ("cold", cold))}
    assert ce["warm"] < ce["cold"] - 0.5, ce


def test_students_of_one_tokenizer_and_data_share_one_tokenisation(tmp_path):
    """Axolotl's prepared-dataset key (its own hash function, on the recipe and the tokenizer's
    name_or_path as loaded from ``tokenizer_config``) is one for every seed's SFT and logit-KD students
    (same tokenizer, same data), and differs for the tokenizer-B student and for seq_kd's data file;
    the shared tokenizer folder holds the tokenizer of the seed's init."""
    from axolotl.utils.data.shared import generate_dataset_hash_from_config
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    sh = Shared(tmp_path / "shared")
    recipes = {}
    for seed in (1, 2):
        runs = student_runs(tmp_path, sh, {m: (m, QUICK) for m in ("sft", "fkl", "seq_kd", "sft_b")}, seed)
        recipes.update({name: DictDefault(yaml.safe_load(recipe.read_text())) for name, (_, recipe, _) in runs.items()})

    def prepared(cfg) -> Path:
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer_config)
        return Path(cfg.dataset_prepared_path) / generate_dataset_hash_from_config(cfg, cfg.datasets, tok.name_or_path)

    paths = {name: prepared(cfg) for name, cfg in recipes.items()}
    assert paths["s1_sft"] == paths["s2_sft"] == paths["s1_fkl"] == paths["s2_fkl"]
    assert len({paths["s1_sft"], paths["s1_sft_b"], paths["s1_seq_kd"]}) == 3
    assert paths["s1_sft_b"] == paths["s2_sft_b"] and paths["s1_seq_kd"] == paths["s2_seq_kd"]
    assert recipes["s1_sft"].base_model != recipes["s2_sft"].base_model  # per-seed inits, one tokenisation
    for name in ("s1_sft", "s2_sft_b"):
        shared, own = (AutoTokenizer.from_pretrained(recipes[name][k]) for k in ("tokenizer_config", "base_model"))
        assert shared.get_vocab() == own.get_vocab() and shared.chat_template == own.chat_template


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_generation_prompt_is_a_prefix_of_the_trained_tokens(name):
    """Exact match generates from the prompt's ids; they must be the ids Axolotl trains on (the whole
    conversation tokenised at once), or the student is asked to continue a tokenisation it never saw."""
    from distill_plugin.demo.core import encode

    tok = TOKENIZERS[name].build()
    for row in make_split(20, seed=4, digits=3, r1_layout=True):
        e = encode(tok, row)
        full = tok(tok.apply_chat_template(row["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
        assert full[: len(e.prompt_ids) + len(e.target_ids)] == e.prompt_ids + e.target_ids


def test_scorer_scores_a_tokenizer_b_student_with_tokenizer_b(tmp_path):
    """An untrained tokenizer-B student is scored with its own tokenizer (prompt ids from B's chat
    template, B's eos and pad); its KL to the tokenizer-A teacher is None, its CE finite."""
    from benchmarks.quality.regimes import Scorer
    from distill_plugin.jsonl import write_jsonl_atomic
    from distill_plugin.testing.tiny import build_model

    sh = Shared(tmp_path / "shared")
    rows = make_split(6, seed=8, digits=3, r1_layout=True)
    write_jsonl_atomic(sh.data("heldout"), rows)
    tok_a, tok_b = TOKENIZERS["a"].build(), TOKENIZERS["b"].build()
    tok_a.save_pretrained(str(sh.tokenizer))
    build_model(sh.teacher, tok_a, hidden_size=32, num_layers=1, seed=0)
    build_model(tmp_path / "student_a", tok_a, hidden_size=32, num_layers=1, seed=1)
    build_model(tmp_path / "student_b", tok_b, hidden_size=32, num_layers=1, seed=1, architecture="llama")
    scorer = Scorer(sh, "heldout", REGIMES["certain"], QUICK)
    b = scorer.score(tmp_path / "student_b", "b")
    a = scorer.score(tmp_path / "student_a", "a")
    assert 0 <= b["exact_match"] <= 1 and math.isfinite(b["heldout_ce"]) and b["kl_to_teacher"] is None
    assert math.isfinite(a["kl_to_teacher"]) and a["kl_to_teacher"] > 0
    # An untrained student's CE is about log(vocab): B's vocabulary, not A's.
    assert abs(b["heldout_ce"] - math.log(len(tok_b))) < abs(b["heldout_ce"] - math.log(len(tok_a)))
    used, examples = scorer.encoded("b")
    prompt = tok_b.apply_chat_template(rows[0]["messages"][:1], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|user|>") and examples[0].prompt_ids == tok_b(prompt, add_special_tokens=False)["input_ids"]
    assert used.eos_token == "<|end|>" and examples[0].target_ids[-1] == tok_b.convert_tokens_to_ids("<|end|>")
    assert scorer.encoded("a")[1][0].prompt_ids != examples[0].prompt_ids


def test_a_teacher_trained_on_the_same_rows_is_copied_not_trained(tmp_path, monkeypatch):
    """``--regime all``: the unlabelled regime copies the certain regime's teacher (the same rows,
    tokenizer and settings); the uncertain regime, on other rows, trains its own."""
    from rich.console import Console

    from benchmarks.quality import runner

    trained = []

    def train_teacher(sh, s, console):
        trained.append(sh.root.parent.name)
        sh.teacher.mkdir()
        (sh.teacher / "weights").write_text(sh.root.parent.name)
        return 7.0

    monkeypatch.setattr(runner, "train_teacher", train_teacher)
    built = {}
    for name in ("certain", "unlabelled", "uncertain"):
        sh = Shared(tmp_path / name / "shared")
        donors = tuple(tmp_path / done / "shared" for done in built)
        built[name] = runner.build_shared(sh, REGIMES[name].quick, REGIMES[name], Console(quiet=True), donors)
    assert trained == ["certain", "uncertain"]
    assert (tmp_path / "unlabelled" / "shared" / "teacher" / "weights").read_text() == "certain"
    assert built["unlabelled"]["teacher_from"] == str(tmp_path / "certain" / "shared")
    assert built["unlabelled"]["teacher_seconds"] == 7.0 and "teacher_from" not in built["uncertain"]


@pytest.mark.parametrize("flag", [["--method", "sft"], ["--tune"], ["--budget"], ["--device", "cuda"]])
def test_regime_all_runs_only_each_regimes_own_rows(flag, monkeypatch, tmp_path):
    import bench_quality

    monkeypatch.setattr(sys, "argv", ["bench_quality.py", "--regime", "all", "--out", str(tmp_path / "out"), *flag])
    with pytest.raises(SystemExit, match="--regime all"):
        bench_quality.main()
    assert not (tmp_path / "out").exists()


def test_overrides_keep_types_and_refuse_unknown_keys():
    s = with_overrides(Settings(), ["temperature=2", "student_steps=10"])
    assert s.temperature == 2.0 and isinstance(s.temperature, float) and s.student_steps == 10
    with pytest.raises(SystemExit, match="tempreature"):
        with_overrides(Settings(), ["tempreature=2"])


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    """``--regime uncertain --quick --method topk --seed 1`` through the script as a user runs it: the
    source's data and the teacher on its own sample, one ``prepare`` step through the ``distill-data
    logits`` CLI, the SFT baseline (added by the script) and the plugin's offline top-k student through
    ``axolotl.cli.train``, scoring against the source, results.json/.md.

    One prepare step and two students (trained at once): each extra Python process that imports
    Axolotl costs about a minute on a loaded 2-core machine. Sequence-level KD's four-step
    ``distill-data`` chain is run by the benchmark itself, not here."""
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_quality.py"), "--regime", "uncertain",
                           "--quick", "--out", str(out), "--method", "topk", "--seed", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    check_quick_output(out, output)


def check_quick_output(out: Path, output: str) -> None:
    """What ``--regime uncertain --quick --method topk --seed 1`` must have written to ``out`` and printed."""
    results = json.loads((out / "results.json").read_text())
    assert results["regime"] == "uncertain" and list(results["summary"]) == ["sft", "topk"]
    assert [(r["seed"], r["row"]) for r in results["runs"]] == [(1, "sft"), (1, "topk")]
    for r in results["runs"]:
        assert r["train_seconds"] > 0 and r["tokenizer"] == "a" and 0 <= r["validity"] <= 1
        for key in ("kl_to_source", "seq_kl_to_source", "kl_to_teacher", "heldout_ce"):
            assert math.isfinite(r[key]) and r[key] >= 0, key
    teacher = results["teacher"]
    assert teacher["kl_to_teacher"] is None and math.isfinite(teacher["kl_to_source"])
    assert set(results["prepare_seconds"]) == {"topk"} and results["summary"]["topk"]["baseline"] == "sft"
    # the paired difference is the topk student's KL to the source minus the same seed's SFT student's
    kl = {r["row"]: r["kl_to_source"] for r in results["runs"]}
    assert results["summary"]["topk"]["paired"]["mean"] == pytest.approx(kl["topk"] - kl["sft"])
    assert (out / "shared" / "data" / "teacher_train.jsonl").exists()
    table = (out / "results.md").read_text()
    for label in ("teacher", "SFT (ground truth)", "offline top-k KD"):
        assert label in table and label in output
    # Students differ only by their data file and distill block; every student trained its steps.
    recipes = {n: yaml.safe_load((out / "seed_1" / "recipes" / f"{n}.yml").read_text()) for n in ("sft", "topk")}
    strip = lambda c: {k: v for k, v in c.items() if k not in ("plugins", "distill", "datasets", "output_dir", "dataset_prepared_path")}
    assert strip(recipes["sft"]) == strip(recipes["topk"])
    assert recipes["topk"]["distill"]["teacher_logits"].endswith("shared/topk/store")
    # The store holds the teacher's top-k of every training row, captured by the CLI from the students' recipe.
    capture = (out / "shared" / "topk" / "distill-data.log").read_text()
    n_train = len((out / "shared" / "data" / "train.jsonl").read_text().splitlines())
    assert re.search(rf"captured {n_train} rows \(0 already stored\)", capture), capture[-2000:]
    logged = {name: (out / "logs" / f"s1_{name}.log").read_text() for name in ("sft", "topk")}
    for name in ("sft", "topk"):
        assert len(re.findall(r"\{'loss': ", logged[name])) == QUICK.student_steps, name
    # One tokenisation for both (same tokenizer and data, trained at once): one student prepared it
    # under Axolotl's lock, the other loaded it.
    assert sorted("Loading prepared dataset from disk" in text for text in logged.values()) == [False, True]
    assert sum("Unable to find prepared dataset" in text for text in logged.values()) == 1
    # The offline student trained on the store: its KD term is logged at every step.
    assert len(re.findall(r"'kd_loss': '?[\d.]+", (out / "logs" / "s1_topk.log").read_text())) == QUICK.student_steps


@pytest.mark.parametrize("regime", list(REGIMES))
def test_every_baseline_is_a_row_and_comes_before_its_methods(regime):
    """A regime's default run trains its rows as listed; a row's baseline is trained first (its
    paired difference and gap closed need it)."""
    order = list(method_rows(list(REGIMES[regime].methods), QUICK))
    assert order == list(REGIMES[regime].methods)
    assert all(order.index(METHODS[m].baseline) <= order.index(m) for m in order)


def reuse_fixture(tmp_path, seq_kd_rows: list[dict]) -> dict:
    """The seed-1 runs of rows sft, seq_kd and fkl, with ``seq_kd_rows`` as seq_kd's exported file."""
    from distill_plugin.jsonl import write_jsonl_atomic

    sh = Shared(tmp_path / "shared")
    write_jsonl_atomic(sh.data("train"), make_split(12, seed=0, digits=3, r1_layout=True))
    write_jsonl_atomic(METHODS["seq_kd"].data(sh), seq_kd_rows)
    return student_runs(tmp_path, sh, {m: (m, QUICK) for m in ("sft", "seq_kd", "fkl")}, seed=1)


def test_seq_kd_reuses_sft_only_when_its_file_trains_on_the_same_rows(tmp_path):
    """``reuse.same_students`` reads the files: an export that writes the ground truth's messages in the
    same order (other keys ordered and named differently, as ``distill-data export`` writes them) is
    SFT's training; one changed character, or the same rows in another order, is not."""
    from benchmarks.quality.reuse import same_students

    truth = make_split(12, seed=0, digits=3, r1_layout=True)
    exported = [{"messages": r["messages"], "id": r["id"], "source": "prompts"} for r in truth]
    runs = reuse_fixture(tmp_path / "same", exported)
    assert (tmp_path / "same/shared/seq_kd/train.jsonl").read_bytes() != (tmp_path / "same/shared/data/train.jsonl").read_bytes()
    assert same_students(runs) == {"s1_seq_kd": "s1_sft"}  # fkl has a distill block: never the same

    changed = [dict(r) for r in exported]
    changed[5] = {**changed[5], "messages": [changed[5]["messages"][0],
                                              {"role": "assistant", "content": changed[5]["messages"][1]["content"] + " "}]}
    assert same_students(reuse_fixture(tmp_path / "changed", changed)) == {}
    assert same_students(reuse_fixture(tmp_path / "order", exported[1:] + exported[:1])) == {}


def test_seq_kd_reuse_across_seeds_and_settings(tmp_path):
    """Another seed is another student (its init and data order): a run is only ever reused within its
    seed; and a budget change on one row makes it its own student."""
    from benchmarks.quality.reuse import same_students

    truth = make_split(12, seed=0, digits=3, r1_layout=True)
    runs = reuse_fixture(tmp_path, truth)
    sh = Shared(tmp_path / "shared")
    runs.update(student_runs(tmp_path, sh, {"sft": ("sft", QUICK), "seq_kd": ("seq_kd", QUICK)}, seed=2))
    assert same_students(runs) == {"s1_seq_kd": "s1_sft", "s2_seq_kd": "s2_sft"}
    longer = student_runs(tmp_path, sh, {"sft": ("sft", QUICK), "seq_kd": ("seq_kd", replace(QUICK, student_steps=9))}, 3)
    assert same_students(longer) == {}


def test_a_reused_rows_table_cell_names_the_row_it_is():
    """results.md: the reused row shows which row's student it is, not a training time of 0."""
    from benchmarks.quality.table import markdown

    teacher = {"exact_match": 0.9, "params": 1000}
    runs = []
    for seed in (1, 2):
        base = {"seed": seed, "tokenizer": "a", "exact_match": 0.5, "kl_to_teacher": 0.1, "heldout_ce": 0.2, "params": 10}
        runs += [{**base, "row": "sft", "train_seconds": 30.0 + seed}, {**base, "row": "seq_kd", "train_seconds": None, "same_as": "sft"}]
    summary = summarise(teacher, runs, ["sft", "seq_kd"], CERTAIN_METRICS)
    assert summary["seq_kd"]["train_seconds"] is None and summary["seq_kd"]["same_as"] == ["sft"]
    assert summary["seq_kd"]["exact_match"] == summary["sft"]["exact_match"]
    rows = {name: {"method": name, "label": METHODS[name].label} for name in ("sft", "seq_kd")}
    results = {"settings": {"digits": 3, "student_steps": 8, "student_batch": 8}, "seeds": [1, 2], "teacher": teacher,
               "title": "certain", "expectation": "none", "metrics": [vars(m) for m in CERTAIN_METRICS],
               "split": "heldout", "split_size": 32, "summary": summary, "rows": rows, "prepare_seconds": {"seq_kd": 5.0},
               "student_params": {"a": 10}, "teacher_seconds": 3.0, "wall_seconds": 60.0, "jobs": 2, "threads": 1}
    line = next(x for x in markdown(results).splitlines() if x.startswith(f"| {METHODS['seq_kd'].label}"))
    assert "= SFT (ground truth) (identical data, reused)" in line and "| 5 |" in line


def test_a_non_empty_folder_the_benchmark_did_not_write_is_refused(tmp_path):
    from distill_plugin.demo.run import claim_output

    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="not a previous output of benchmarks/bench_quality.py"):
        claim_output(tmp_path, ".bench_quality", "benchmarks/bench_quality.py")
    fresh = claim_output(tmp_path / "new", ".bench_quality", "benchmarks/bench_quality.py")
    assert claim_output(fresh, ".bench_quality", "benchmarks/bench_quality.py") == fresh  # its own output: reused
    with pytest.raises(SystemExit, match="distill_plugin.demo"):
        claim_output(fresh)  # the demo does not take the benchmark's folder
