"""``distill-data evaluate`` through the real CLI on tiny models: real HF generation, real math-verify
verification, the teacher fit, a LoRA adapter directory, resume after a kill, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from dp_helpers import read_jsonl, subprocess_env, write_jsonl
from data_prep.cli import app
from distill_plugin.demo.core import encode, train_causal_lm
from distill_plugin.testing.addition import make_split
from distill_plugin.testing.tiny import build_model, build_tokenizer

HELDOUT = 6


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A teacher that memorised the held-out arithmetic chats (demo task), an untrained student, a
    LoRA adapter on that student, and the held-out file (chats with the data's completions)."""
    root = tmp_path_factory.mktemp("eval_pair")
    rows = make_split(HELDOUT, seed=7)
    tok = build_tokenizer()
    teacher = build_model(None, tok, hidden_size=64, seed=0)
    train_causal_lm(teacher, [encode(tok, r) for r in rows], tok.pad_token_id, steps=250, batch_size=HELDOUT, lr=3e-3)
    teacher.save_pretrained(str(root / "teacher"))
    tok.save_pretrained(str(root / "teacher"))
    build_model(root / "student", tok, hidden_size=32, seed=2)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(str(root / "student"))  # so the adapter names its base

    lora = get_peft_model(student, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(str(root / "adapter"))  # adapter_config.json names root/student as its base
    tok.save_pretrained(str(root / "adapter"))
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "adapter": root / "adapter",
            "heldout": write_jsonl(root / "heldout.jsonl", rows), "rows": rows}


def args(pair, out, *extra):
    return ["evaluate", str(pair["heldout"]), "-o", str(out), "--teacher", str(pair["teacher"]),
            "--model", str(pair["student"]), "--model", str(pair["adapter"]), "--baseline", str(pair["student"]),
            "--task", "math", "--backend", "hf", "-n", "2", "--max-tokens", "48", "--temperature", "0.6",
            "--seed", "0", "--suffix", "", "--workers", "1", "--batch-size", "4", *extra]


def cli(*argv):
    return CliRunner().invoke(app, [str(a) for a in argv])


def by_name(report):
    return {m["name"]: m for m in report["models"]}


@pytest.fixture(scope="module")
def evaluated(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    res = cli(*args(pair, out))
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text()), res.output


def test_report_per_model(pair, evaluated):
    out, report, output = evaluated
    models = by_name(report)
    assert list(models) == ["teacher", "student", "adapter"] and report["prompts"] == HELDOUT
    teacher, student = models["teacher"], models["student"]
    for m in models.values():
        acc = m["pass_at_1"]
        assert (m["prompts"], m["samples"], acc["clusters"]) == (HELDOUT, 2 * HELDOUT, HELDOUT)
        assert acc["low"] <= acc["mean"] <= acc["high"] and 0 <= m["truncation_rate"] <= 1
        assert m["mean_completion_tokens"] > 0
    # real verification: the memorised teacher answers, the untrained student does not
    assert teacher["pass_at_1"]["mean"] >= 0.5 > student["pass_at_1"]["mean"]
    verdicts = Counter(g["verdict"] for r in read_jsonl(out / "models/teacher/ver/verified.jsonl")
                       for g in r["generations"])
    assert verdicts["correct"] >= HELDOUT
    # the untrained student runs to the length limit
    assert student["truncation_rate"] > 0.5 and student["mean_completion_tokens"] > teacher["mean_completion_tokens"]
    assert "| teacher | teacher |" in output and (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_teacher_fit_on_the_teachers_completions(pair, evaluated):
    out, report, _ = evaluated
    models = by_name(report)
    teacher_gens = [g for r in read_jsonl(out / "models/teacher/gen/generations.jsonl") for g in r["generations"]]
    # every teacher sample is scored: the backend's own token counts (stop token included) add up to
    # the fit's tokens (the tiny tokenizer round-trips text exactly)
    assert models["student"]["fit"]["tokens"] == sum(g["completion_tokens"] for g in teacher_gens)
    assert models["student"]["fit"]["sequences"] == 2 * HELDOUT
    assert models["student"]["fit"]["kl"] > 1.0  # untrained student vs a teacher sure of its answers
    assert models["teacher"]["fit"]["kl"] == 0.0
    assert models["teacher"]["fit"]["student_ce"] < models["student"]["fit"]["student_ce"]
    assert models["adapter"]["fit"]["kl"] != pytest.approx(models["student"]["fit"]["kl"], rel=1e-3)
    gap = models["adapter"]["gap_closed"]
    assert models["student"]["gap_closed"]["pass_at_1"] == 0.0 and set(gap) == {"pass_at_1", "kl"}


def test_lora_adapter_loads_on_its_base(pair, evaluated):
    """The adapter's CE on the data equals the unmerged PeftModel's full-logit CE, not the base's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from distill_plugin.evaluation import encode_completion

    out = evaluated[0].parent / "on_data"
    res = cli("evaluate", pair["heldout"], "-o", out, "--model", pair["adapter"], "--model", pair["student"],
              "--fit-on", "data", "-n", "1", "--max-tokens", "4", "--suffix", "", "--workers", "1", "--seed", "0")
    assert res.exit_code == 0, res.output
    models = by_name(json.loads((out / "report.json").read_text()))
    assert models["adapter"]["fit"]["kl"] is None  # no teacher: CE on the data only

    tok = build_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(str(pair["student"]), dtype=torch.float64)
    peft_model = PeftModel.from_pretrained(base, str(pair["adapter"])).eval()

    def ce(model):
        total, n = 0.0, 0
        for r in pair["rows"]:
            prompt, completion = encode_completion(tok, r["messages"][:-1], r["messages"][-1]["content"])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
            rows = logits[len(prompt) - 1 : len(prompt) + len(completion) - 1, : len(tok)]
            total += float(torch.nn.functional.cross_entropy(rows, torch.tensor(completion), reduction="sum"))
            n += len(completion)
        return total / n

    with_adapter = ce(peft_model)
    with peft_model.disable_adapter():
        without = ce(peft_model)
    assert models["adapter"]["fit"]["student_ce"] == pytest.approx(with_adapter, rel=1e-4)
    assert models["student"]["fit"]["student_ce"] == pytest.approx(without, rel=1e-4)
    assert abs(with_adapter - without) > 1e-3


def test_resume_skips_finished_work(pair, evaluated, tmp_path):
    """A second run recomputes nothing that is saved: generations untouched, a cut verification and a
    removed fit are redone, the report is the same."""
    out, report, _ = evaluated
    gens = {p: p.read_bytes() for p in out.glob("models/*/gen/generations.jsonl")}
    ver = out / "models/student/ver/verified.jsonl"
    ver.write_text(ver.read_text().splitlines()[0] + "\n")
    (out / "models/adapter/fit.json").unlink()
    (out / "report.json").unlink()
    res = cli(*args(pair, out))
    assert res.exit_code == 0, res.output
    assert {p: p.read_bytes() for p in gens} == gens
    again = json.loads((out / "report.json").read_text())
    assert again["models"] == report["models"]


@pytest.mark.slow  # two CLI subprocesses (imports: minutes on a loaded machine)
def test_killed_run_resumes_each_prompt_once(pair, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep.cli", *args(pair, out, "--batch-size", "1", "--chunk-size", "1")]
    target = out / "models/student/gen/generations.jsonl"
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
        if target.exists() and target.read_bytes().count(b"\n") >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "report.json").exists()
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("teacher", "student", "adapter"):
        ids = Counter(r["id"] for r in read_jsonl(out / f"models/{name}/gen/generations.jsonl"))
        assert set(ids) == {r["id"] for r in pair["rows"]} and max(ids.values()) == 1
    assert json.loads((out / "report.json").read_text())["prompts"] == HELDOUT


# --- errors: one line, exit 2 -----------------------------------------------------------------

def one_error(res, *names):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


def test_missing_model_dir(pair, tmp_path):
    missing = tmp_path / "out" / "kd"
    one_error(cli("evaluate", pair["heldout"], "-o", tmp_path / "eval", "--model", missing), missing, "not found")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    one_error(cli("evaluate", pair["heldout"], "-o", tmp_path / "eval", "--model", not_a_model), not_a_model,
              "config.json")
    assert not (tmp_path / "eval").exists()


def test_bad_input_line(pair, tmp_path):
    lines = pair["heldout"].read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], '{"id": "x", "messages": [', lines[2]]) + "\n")
    one_error(cli("evaluate", bad, "-o", tmp_path / "eval", "--model", pair["student"]), f"{bad}:3")
    no_prompt = write_jsonl(tmp_path / "no_prompt.jsonl", [{"id": "a", "answer": "1"}])
    one_error(cli("evaluate", no_prompt, "-o", tmp_path / "eval", "--model", pair["student"]),
              f"{no_prompt}:1", "missing_prompt")
    no_reference = write_jsonl(tmp_path / "no_ref.jsonl", [{"id": "a", "prompt": "What is 1+1?", "answer": "2"}])
    one_error(cli("evaluate", no_reference, "-o", tmp_path / "eval", "--model", pair["student"], "--fit-on", "data"),
              f"{no_reference}:1", "--fit-on data")
    assert not (tmp_path / "eval").exists()


def test_baseline_must_be_a_model(pair, tmp_path):
    one_error(cli("evaluate", pair["heldout"], "-o", tmp_path / "eval", "--model", pair["student"],
                  "--baseline", "sft"), "--baseline sft")


def test_resume_with_other_sampling_is_refused(pair, tmp_path):
    common = ["evaluate", pair["heldout"], "-o", tmp_path / "eval", "--model", pair["student"], "--max-tokens", "2",
              "--workers", "1", "--limit", "2"]
    assert cli(*common, "-n", "1").exit_code == 0
    one_error(cli(*common, "-n", "2"), "_settings.generate.json", "sampling.n")


def test_tokenizer_mismatch_skips_the_fit_with_a_reason(pair, tmp_path):
    tok = build_tokenizer()
    tok.add_tokens(["<extra>"])
    other = tmp_path / "other"
    build_model(other, tok, hidden_size=32, seed=3)
    res = cli("evaluate", pair["heldout"], "-o", tmp_path / "eval", "--teacher", pair["teacher"], "--model", other,
              "-n", "1", "--max-tokens", "4", "--suffix", "", "--workers", "1", "--limit", "2")
    assert res.exit_code == 0, res.output
    model = by_name(json.loads((tmp_path / "eval/report.json").read_text()))["other"]
    assert model["fit"] is None and "tokenizer differs from the teacher's" in model["fit_skipped"]
    assert model["pass_at_1"]["clusters"] == 2  # accuracy is still measured
    assert "tokenizer differs" in (tmp_path / "eval/report.md").read_text()
