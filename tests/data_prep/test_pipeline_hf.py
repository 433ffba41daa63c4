"""The whole pipeline on the tiny trained teacher through the transformers backend.

What this proves: real `model.generate` sampling, chat-template rendering, reasoning split,
verification, filtering, export and the template check run end to end and agree with each other;
the three prompts the teacher memorised with a correct gold survive, the memorised prompt with a
wrong gold is dropped as incorrect, the unseen prompt (the teacher answers with something memorised, or garbage) is dropped.
"""

import json

import yaml
from typer.testing import CliRunner

from dp_helpers import read_jsonl
from data_prep.trajectory import PromptStyle
from distill_plugin.generation import SamplingParams
from data_prep.cli import app
from data_prep.generate import GenerateConfig, generate

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_hf_backend_rows(tmp_path, tiny_teacher, prompts_file):
    cfg = GenerateConfig(backend="hf", model=str(tiny_teacher), sampling=SamplingParams(n=2, max_tokens=40, seed=0))
    rep = generate(prompts_file, tmp_path / "gen", cfg)
    rows = read_jsonl(tmp_path / "gen" / "generations.jsonl")
    assert rep.rows_out == len(rows) == 5 and all(len(r["generations"]) == 2 for r in rows)
    first = rows[0]
    assert first["messages"][0]["content"].endswith("\\boxed{}.")  # R1 suffix applied
    g = first["generations"][0]
    assert g["reasoning"] == "2+3=5" and g["content"] == "\\boxed{5}" and g["think_closed"]
    assert g["finish_reason"] == "stop" and g["completion_tokens"] > 10 and g["prompt_tokens"] > 10
    unseen = rows[-1]["generations"][0]
    assert unseen["completion_tokens"] <= 40
    assert (tmp_path / "gen" / "_report.generate.json").exists()
    assert (tmp_path / "gen" / "_lengths.generate.png").stat().st_size > 1000


def test_prefill_think(tmp_path, tiny_teacher, prompts_file):
    cfg = GenerateConfig(model=str(tiny_teacher), sampling=SamplingParams(n=1, max_tokens=40, seed=0),
                         prompt=PromptStyle(prefill_think=True), limit=1)
    generate(prompts_file, tmp_path / "gen", cfg)
    (g,) = read_jsonl(tmp_path / "gen" / "generations.jsonl")[0]["generations"]
    # the model continues after the prefilled "<think>\n"; the stored text includes the prefill
    assert g["text"].startswith("<think>\n") and g["think_closed"] and g["content"] == "\\boxed{5}"


def test_cli_verbs_chain(tmp_path, tiny_teacher, tiny_student, prompts_file):
    gen, ver, kept, out = (tmp_path / x for x in ("gen", "ver", "kept", "train.jsonl"))
    _ok(runner.invoke(app, ["generate", str(prompts_file), "-o", str(gen), "--model", str(tiny_teacher),
                            "-n", "2", "--max-tokens", "40", "--seed", "0"]))
    _ok(runner.invoke(app, ["verify", str(gen), "-o", str(ver), "--task", "math", "--workers", "1"]))
    vrows = read_jsonl(ver / "verified.jsonl")
    assert [r["n_correct"] for r in vrows[:4]] == [2, 2, 2, 0]
    assert {g["verdict"] for g in vrows[3]["generations"]} == {"wrong"}
    _ok(runner.invoke(app, ["filter", str(ver), "-o", str(kept), "--max-tokens", "16384",
                            "--tokenizer", str(tiny_student)]))
    _ok(runner.invoke(app, ["export", str(kept), "-o", str(out), "--check-template", str(tiny_student)]))
    rows = read_jsonl(out)
    assert len(rows) == 3
    assert rows[0]["messages"][-1]["content"] == "<think>\n2+3=5\n</think>\n\n\\boxed{5}"
    filt = json.loads((kept / "_report.filter.json").read_text())
    assert filt["drops"]["no_generation_left"] == 2
    # 2 wrong-gold generations are incorrect; the unseen prompt's 2 are dropped as incorrect or
    # truncated depending on what the memorising teacher emits for it
    assert filt["generation_drops"]["incorrect"] >= 2 and sum(filt["generation_drops"].values()) == 4


def test_pipeline_yaml_run_and_rerun(tmp_path, tiny_teacher, tiny_student, prompts_file):
    cfg = {
        "input": str(prompts_file), "workdir": "work",
        "generate": {"backend": "hf", "model": str(tiny_teacher),
                     "sampling": {"n": 2, "max_tokens": 40, "seed": 0}},
        "verify": {"task": "math", "workers": 1},
        "filter": {"max_tokens": 16384, "tokenizer": str(tiny_student)},
        "export": {"select": "shortest_correct", "check_template": str(tiny_student)},
    }
    yml = tmp_path / "pipeline.yml"
    yml.write_text(yaml.safe_dump(cfg))
    _ok(runner.invoke(app, ["run", str(yml)]))
    work = tmp_path / "work"
    train = (work / "train.jsonl").read_text()
    assert len(train.splitlines()) == 3
    rep = json.loads((work / "report.json").read_text())
    assert rep["stages"]["generate"]["rows_out"] == 5 and rep["stages"]["export"]["rows_out"] == 3
    assert rep["overall_kept_fraction"] == 0.6
    assert rep["stages"]["verify"]["generation_pass_rate"] == 0.6
    assert (work / "kept" / "_lengths.filter.png").exists()
    # re-running resumes: nothing regenerated, same output
    _ok(runner.invoke(app, ["run", str(yml)]))
    rep2 = json.loads((work / "report.json").read_text())
    assert rep2["stages"]["generate"]["rows_out"] == 0 and rep2["stages"]["generate"]["already_done"] == 5
    assert rep2["stages"]["verify"]["already_done"] == 5
    assert (work / "train.jsonl").read_text() == train


def test_bad_input_lines_skipped_or_strict(tmp_path, tiny_teacher):
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b'{"problem": "What is 2+3?", "answer": "5"}\n'
                    b'{"problem": "oops"\n'
                    b'{"problem": ""}\n'
                    b'{"answer": "no prompt"}\n'
                    b'{"problem": "bad \xff byte"}\n'
                    b'{"problem": "What is 4*2?", "answer": "8"}\n')
    gen = tmp_path / "gen"
    args = ["generate", str(src), "-o", str(gen), "--model", str(tiny_teacher), "-n", "1",
            "--max-tokens", "30", "--seed", "0"]
    res = _ok(runner.invoke(app, args))
    rep = json.loads((gen / "_report.generate.json").read_text())
    assert rep["rows_out"] == 2 and rep["input_skips"]["counts"] == {
        "malformed_json": 1, "empty_prompt": 1, "missing_prompt": 1, "not_utf8": 1}
    assert f"{src}:2: malformed_json" in rep["input_skips"]["examples"][0]
    before = (gen / "generations.jsonl").read_bytes()
    res = runner.invoke(app, args + ["--strict"])
    assert res.exit_code == 2 and f"{src}:2: malformed_json" in res.output
    assert (gen / "generations.jsonl").read_bytes() == before  # nothing already written lost
