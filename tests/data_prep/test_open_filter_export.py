"""Open-ended data after the judge: filter by score threshold, top fraction (per prompt, overall) and
the teacher's pass rate, every drop counted; export a stable, disjoint train/eval split by prompt id
into JSONL or Parquet shards of a given size that ``datasets`` loads back, with the token-length
table of each split; the boolean flags read naturally."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from data_prep.cli import app
from data_prep.dataset_out import parse_size, split_of
from data_prep.export import ExportConfig, export
from data_prep.filters import FilterConfig, filter_rows
from dp_helpers import read_jsonl, write_jsonl


def gen(score, content="an answer", think=False, **kw) -> dict:
    text = f"<think>\nr\n</think>\n\n{content}" if think else content
    g = {"text": text, "reasoning": "r" if think else "", "content": content, "think_closed": think,
         "finish_reason": "stop", "prompt_tokens": 4, "completion_tokens": 10, "score": score,
         "judge": {"status": "ok" if score is not None else "no_score", "reasoning": "because"}}
    return {**g, **kw}


def row(rid, scores, prompt=None, **kw) -> dict:
    return {"id": rid, "prompt": prompt or f"Open question number {rid}?", "source": "t",
            "generations": [gen(s, content=f"answer {rid}.{k}") for k, s in enumerate(scores)], **kw}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


ROWS = [row("a", [9, 3, 7, 8]), row("b", [2, 2, 1, 2]), row("c", [10, 9, 9, 10]), row("d", [None, 6, 8, 5]),
        row("e", [7, 7, 4, None])]


def kept_scores(path):
    return {r["id"]: [g["score"] for g in r["generations"]] for r in read_jsonl(path)}


def test_min_score_and_top_fraction_per_prompt(tmp_path):
    src = write_jsonl(tmp_path / "judged" / "judged.jsonl", ROWS)
    rep = filter_rows(src.parent, tmp_path / "kept", FilterConfig(require_think=False, min_score=5, top_fraction=0.5,
                                                                  top_scope="prompt", dedup=False))
    # judged generations need no verification; unscored ones are dropped once a score rule is on
    assert kept_scores(tmp_path / "kept" / "kept.jsonl") == {"a": [9, 8], "c": [10, 10], "d": [6, 8], "e": [7]}
    assert dict(rep.generation_drops) == {"below_min_score": 6, "unscored": 2, "not_top_fraction": 5}
    assert dict(rep.drops) == {"no_generation_left": 1}
    saved = json.loads((tmp_path / "kept" / "_report.filter.json").read_text())
    assert saved["scores"]["histogram"] == {"6": 1, "7": 1, "8": 2, "9": 1, "10": 2}
    assert (tmp_path / "kept" / "_scores.filter.png").exists()


def test_top_fraction_overall_is_exact_and_ties_go_to_the_earlier(tmp_path):
    src = write_jsonl(tmp_path / "judged.jsonl", ROWS)
    rep = filter_rows(src, tmp_path / "kept", FilterConfig(require_think=False, top_fraction=0.25, dedup=False))
    # 18 scored generations -> ceil(0.25 * 18) = 5 best: 10, 10, 9 (a), 9, 9 (c); a's 9 precedes c's
    assert kept_scores(tmp_path / "kept" / "kept.jsonl") == {"a": [9], "c": [10, 9, 9, 10]}
    assert rep.generation_drops["not_top_fraction"] == 13 and rep.generation_drops["unscored"] == 2
    assert rep.drops["no_generation_left"] == 3 and rep.rows_out == 2
    assert rep.extra["score_cut"] == {"top_fraction": 0.25, "kept": 5, "of": 18, "lowest_kept": 9}
    assert rep.extra["generations_out"] == 5 and not list((tmp_path / "kept").glob("_stage*"))


def test_pass_rate_from_scores_and_from_verification(tmp_path):
    rows = ROWS + [{**row("v", [None, None]), "n_checked": 2, "n_correct": 1, "pass_rate": 0.5},
                   {**row("w", [None, None]), "n_checked": 2, "n_correct": 2, "pass_rate": 1.0},
                   row("x", [None, None])]
    src = write_jsonl(tmp_path / "judged.jsonl", rows)
    rep = filter_rows(src, tmp_path / "kept", FilterConfig(require_think=False, pass_rate=(0.1, 0.9), pass_score=7,
                                                           keep_unverifiable=True, dedup=False))
    # pass rates (score >= 7 over the scored generations): a 3/4, b 0, c 1, d 1/3, e 2/3;
    # v 0.5 and w 1.0 (verified); x unknown
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "kept" / "kept.jsonl")) == ["a", "d", "e", "v"]
    assert dict(rep.drops) == {"pass_rate_out_of_range": 3, "pass_rate_unknown": 1}
    # --pass-score defaults to --min-score; with neither, a judged row without verification is refused
    with pytest.raises(ValueError, match="give --pass-score"):
        filter_rows(src, tmp_path / "kept2", FilterConfig(require_think=False, pass_rate="0:1"))
    assert not (tmp_path / "kept2" / "kept.jsonl").exists()


@pytest.mark.parametrize("spec", ["0.9:0.1", "0.5", "a:b", "0:1.5", "-0.1:0.5"])
def test_bad_pass_rate_is_one_line_exit_2(tmp_path, spec):
    src = write_jsonl(tmp_path / "judged.jsonl", ROWS)
    res = cli("filter", src, "-o", tmp_path / "kept", "--pass-rate", spec)
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: pass_rate: expected 'lo:hi'") and repr(spec) in line
    assert not (tmp_path / "kept").exists()


def test_boolean_flags_read_naturally(tmp_path):
    helps = "".join(cli(verb, "--help").output for verb in ("generate", "verify", "judge", "filter", "export"))
    assert "--no-no-" not in helps  # was --no-dedup / --no-no-dedup
    for flag in ("--dedup", "--no-dedup", "--require-think", "--no-require-think"):
        assert flag in helps
    rows = [row("a", [8], prompt="Same question?"), row("b", [9], prompt="same question")]
    src = write_jsonl(tmp_path / "judged.jsonl", rows)
    for flag, n in (("--dedup", 1), ("--no-dedup", 2)):
        res = cli("filter", src, "-o", tmp_path / flag.strip("-"), flag, "--no-require-think", "--min-score", "1")
        assert res.exit_code == 0, res.output
        assert len(read_jsonl(tmp_path / flag.strip("-") / "kept.jsonl")) == n


# --- export ----------------------------------------------------------------------------------

def many_rows(n=200, gens=1):
    return [{"id": f"p{i}", "prompt": f"Tell me about topic {i}.", "source": "s",
             "generations": [gen(5 + k, content=f"Topic {i} is interesting, take {k}. " * (1 + i % 7)) for k in range(gens)]}
            for i in range(n)]


def ids_by_split(out_dir):
    from datasets import load_dataset

    files = {s: sorted(str(p) for p in out_dir.glob(f"{s}-*")) for s in ("train", "eval")}
    fmt = "parquet" if files["train"][0].endswith(".parquet") else "json"
    ds = load_dataset(fmt, data_files=files)
    return {s: list(ds[s]["id"]) for s in files}, ds


def test_split_is_stable_and_disjoint(tmp_path):
    rows = many_rows(300, gens=2)
    src = write_jsonl(tmp_path / "kept.jsonl", rows)
    export(src, tmp_path / "one", ExportConfig(select="all", split=0.2))
    ids, _ = ids_by_split(tmp_path / "one")
    prompt = lambda i: i.rsplit("#", 1)[0]  # noqa: E731
    train, evl = {prompt(i) for i in ids["train"]}, {prompt(i) for i in ids["eval"]}
    assert not train & evl and len(train | evl) == 300  # no prompt in both, every prompt somewhere
    assert len(ids["eval"]) == 2 * len(evl)  # both samples of a prompt went with it
    assert 0.13 < len(evl) / 300 < 0.27
    # another run: other input order, a third of the prompts missing, a larger fraction
    shuffled = random.Random(1).sample(rows, 200)
    src2 = write_jsonl(tmp_path / "kept2.jsonl", shuffled)
    export(src2, tmp_path / "two", ExportConfig(select="all", split=0.2))
    ids2, _ = ids_by_split(tmp_path / "two")
    assert {prompt(i) for i in ids2["eval"]} == evl & {r["id"] for r in shuffled}
    export(src, tmp_path / "three", ExportConfig(select="first", split=0.3))
    ids3, _ = ids_by_split(tmp_path / "three")
    assert evl <= set(ids3["eval"])  # a larger fraction only moves prompts from train to eval
    assert all(split_of(i, 0.2) == ("eval" if i in evl else "train") for i in train | evl)


def test_parquet_shards_load_back_with_datasets(tmp_path, tiny_student):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    rows = many_rows(120)
    src = write_jsonl(tmp_path / "kept.jsonl", rows)
    out = tmp_path / "data"
    res = cli("export", src, "-o", out, "--select", "highest_score", "--split", "0.1", "--format", "parquet",
              "--shard-size", "4KB", "--tokenizer", tiny_student)
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "_report.export.json").read_text())
    train_files = rep["splits"]["train"]["files"]
    assert len(train_files) >= 3 and train_files[0] == f"train-00000-of-{len(train_files):05d}.parquet"
    sizes = [(out / f).stat().st_size for f in train_files]
    assert all(s >= 4096 for s in sizes[:-1])  # every shard but the last holds at least the shard size
    ids, ds = ids_by_split(out)
    assert len(ids["train"]) + len(ids["eval"]) == 120 and not set(ids["train"]) & set(ids["eval"])
    assert rep["splits"]["eval"]["rows"] == len(ids["eval"]) and len(ids["eval"]) > 0
    # the rows are the JSONL export's, field for field
    export(src, tmp_path / "ref.jsonl", ExportConfig(select="highest_score"))
    ref = {r["id"]: r for r in read_jsonl(tmp_path / "ref.jsonl")}
    for r in ds["train"]:
        assert r == ref[r["id"]]
    assert r["messages"][-1] == {"role": "assistant", "content": ref[r["id"]]["messages"][-1]["content"]}
    assert "<think>" not in r["messages"][-1]["content"]  # a teacher without reasoning: no empty think block
    # the folder loads by itself too (split names from the file names: eval -> test)
    auto = load_dataset(str(out))
    assert auto["train"].num_rows == len(ids["train"]) and auto["test"].num_rows == len(ids["eval"])
    # the token-length table: the student's tokenizer on the rendered conversation
    tok = AutoTokenizer.from_pretrained(str(tiny_student))
    lens = sorted(len(tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
                  for r in ds["train"])
    table = rep["token_lengths_by_split"]["train"]
    assert (table["count"], table["p50"], table["max"]) == (len(lens), lens[len(lens) // 2], lens[-1])
    assert table["p95"] == lens[int(0.95 * len(lens))]
    assert "| train | " in res.output and "| eval | " in res.output
    # re-export into the same folder with bigger shards: the earlier shards are gone
    export(src, out, ExportConfig(select="highest_score", split=0.1, format="parquet", shard_size="1MB"))
    assert sorted(p.name for p in out.glob("*.parquet")) == ["eval-00000-of-00001.parquet", "train-00000-of-00001.parquet"]


def test_jsonl_shards(tmp_path):
    src = write_jsonl(tmp_path / "kept.jsonl", many_rows(50))
    rep = export(src, tmp_path / "data", ExportConfig(select="first", shard_size=2000))
    files = rep.extra["splits"]["train"]["files"]
    assert len(files) > 2 and all((tmp_path / "data" / f).stat().st_size >= 2000 for f in files[:-1])
    got = [r["id"] for f in files for r in read_jsonl(tmp_path / "data" / f)]
    assert got == [f"p{i}" for i in range(50)] and rep.extra["splits"]["eval"]["rows"] == 0


@pytest.mark.parametrize("args,says", [
    (["--shard-size", "lots"], "shard_size: expected a size"),
    (["--split", "1.5"], "split"),
    (["--format", "csv"], "format"),
    (["--split", "0.1", "-o", "data.jsonl"], "the output is a folder"),
])
def test_bad_export_options_are_one_line_exit_2(tmp_path, args, says):
    src = write_jsonl(tmp_path / "kept.jsonl", many_rows(3))
    if "-o" not in args:
        args = args + ["-o", str(tmp_path / "data")]
    res = cli("export", src, "--select", "first", *[a if a != "data.jsonl" else str(tmp_path / a) for a in args])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert says in line


def test_parse_size():
    assert parse_size("200MB") == 200 << 20 and parse_size("1.5G") == int(1.5 * (1 << 30))
    assert parse_size("64KiB") == 64 << 10 and parse_size("4096") == 4096 and parse_size(10) == 10
