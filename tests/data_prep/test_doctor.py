"""``distill-data doctor``: the pair measurements against a float64 full-logit reference, the memory
estimate's directions, and the verb through the real CLI on the tiny pair (same tokenizer, another
tokenizer, a padded lm_head, a stripping chat template, a 4-bit teacher, bad input)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from data_prep.cli import app
from distill_plugin.evaluation import RunShape, estimate_memory, memory_options
from distill_plugin.evaluation.pair_checks import pair_sums
from distill_plugin.losses import KDSettings, online_kd_loss
from distill_plugin.signals import OutputHead
from dp_helpers import write_recipe


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def reference(zt: torch.Tensor, zs: torch.Tensor, temperature: float) -> dict[str, float]:
    """Means over rows, in float64 on the full logits."""
    logp, logq = (torch.log_softmax(z.double() / temperature, -1) for z in (zt, zs))
    p, q = logp.exp(), logq.exp()
    corr = [torch.corrcoef(torch.stack([p[i], q[i]]))[0, 1] for i in range(len(p))]
    return {"kl": (p * (logp - logq)).sum(-1).mean().item(),
            "reverse_kl": (q * (logq - logp)).sum(-1).mean().item(),
            "agreement": (zs.argmax(-1) == zt.argmax(-1)).double().mean().item(),
            "correlation": torch.stack(corr).mean().item(),
            "teacher_entropy": -(p * logp).sum(-1).mean().item(),
            "student_entropy": -(q * logq).sum(-1).mean().item()}


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_pair_measurements_match_a_float64_reference_across_chunks(temperature):
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 37, 50  # chunks of 16: boundaries at 16 and 32, a partial last chunk
    hs, ht = torch.randn(rows, 8, generator=gen), torch.randn(rows, 12, generator=gen)
    ws, wt = torch.randn(55, 8, generator=gen), torch.randn(vocab, 12, generator=gen) * 2  # student padded to 55
    bias = torch.randn(vocab, generator=gen)
    hs, ws[:vocab] = ht[:, :8], wt[:, :8]  # a student that sees part of the teacher: agreement in (0, 1)
    sums = pair_sums(hs, OutputHead(ws), ht, OutputHead(wt, bias), temperature, vocab_size=vocab, chunk_size=16,
                     divergence="reverse_kl")
    got = dict(zip(("reverse_kl", "kl", "agreement", "correlation", "teacher_entropy", "student_entropy"),
                   (sums / rows).tolist()))
    want = reference(ht @ wt.T + bias, hs @ ws[:vocab].T, temperature)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # the KD column is the training loss's own value (forward KL through online_kd_loss)
    fwd = pair_sums(hs, OutputHead(ws), ht, OutputHead(wt, bias), temperature, vocab_size=vocab, chunk_size=16)
    loss = online_kd_loss(hs, ws, ht, wt, settings=KDSettings(temperature=temperature), vocab_size=vocab,
                          teacher_bias=bias, chunk_size=16)
    assert fwd[0].item() / rows == pytest.approx(loss.kd.item(), rel=1e-5)


SHAPE = RunShape(student_params=1_500_000_000, student_hidden=1536, vocab=151_936, student_linear_io=28 * 7 * 10_000,
                 teacher_params=7_000_000_000, teacher_hidden=3584)


def test_memory_estimate_moves_the_right_way():
    base = estimate_memory(SHAPE).gib
    assert estimate_memory(replace(SHAPE, teacher_bits=4)).gib < estimate_memory(replace(SHAPE, teacher_bits=8)).gib < base
    assert estimate_memory(replace(SHAPE, teacher_params=0)).gib < estimate_memory(replace(SHAPE, teacher_bits=4)).gib
    assert estimate_memory(replace(SHAPE, adapter="qlora")).gib < estimate_memory(replace(SHAPE, adapter="lora")).gib < base
    assert estimate_memory(replace(SHAPE, teacher_shards=8)).gib < base
    assert estimate_memory(replace(SHAPE, divergence="jsd")).gib > base  # more live [chunk, V] buffers
    # full FT: 1.5B · (2 weights + 2 grads + 4 Adam) bytes + the fp32 head grad + 5 chunks + 14 GB of bf16 teacher
    parts = estimate_memory(SHAPE).parts
    assert parts["optimizer states"] == 2 * parts["gradients"] == 2 * 2 * SHAPE.student_params
    assert sum(v for k, v in parts.items() if "chunk buffers" in k) == 5 * 256 * 151_936 * 4
    options = dict(memory_options(SHAPE, budget_gib=24))
    assert all(gib < base for gib in options.values()) and "distill.teacher_load_in_4bit: true" in options


def doctor(tmp_path, *args):
    res = cli("doctor", *args, "--json", tmp_path / "report.json", "--device", "cpu")
    report = json.loads((tmp_path / "report.json").read_text()) if res.exit_code in (0, 1) else None
    return res, report, {c["name"]: c for c in report["checks"]} if report else None


def test_same_tokenizer_pair_passes(kd_root, tmp_path):
    res, report, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root))
    assert res.exit_code == 0, res.output
    assert [checks[n]["status"] for n in ("tokenizer", "vocab padding", "think", "memory")] == ["ok"] * 4
    assert {checks[n]["status"] for n in ("agreement", "correlation", "kl", "capacity gap")} <= {"ok", "warn"}
    assert "KL(teacher‖student)" in checks["kl"]["detail"] and "tokenizer" in res.output  # the table
    assert report["memory"]["options"] == []  # under budget: nothing to suggest


def test_other_tokenizer_reports_the_cross_tokenizer_mode(kd_root, tmp_path):
    res, _, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root, "student_sp"))
    assert res.exit_code == 1 and checks["tokenizer"]["status"] == "fail"
    assert "cross_tokenizer: uld | hybrid" in checks["tokenizer"]["detail"]
    assert checks["agreement"]["status"] == "skip"  # ids do not line up
    res, _, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root, "student_sp", cross_tokenizer="hybrid"))
    assert res.exit_code == 0 and checks["tokenizer"]["status"] == "ok"
    assert "cross_tokenizer: hybrid applies" in checks["tokenizer"]["detail"]
    res, _, checks = doctor(tmp_path, "--teacher", kd_root / "teacher", "--student", kd_root / "student_sp")
    assert res.exit_code == 0 and checks["tokenizer"]["status"] == "warn", res.output  # no recipe: advice only


def test_padded_lm_head_is_reported(kd_root, tmp_path):
    res, _, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root, "student_padded"))
    assert res.exit_code == 0
    assert "student lm_head padded: 320 rows, tokenizer 261" in checks["vocab padding"]["detail"]
    assert "teacher lm_head 261 rows = tokenizer" in checks["vocab padding"]["detail"]


def test_a_template_that_strips_the_reasoning_fails(kd_root, tmp_path):
    from distill_plugin.testing.tiny import STRIPPING_CHAT_TEMPLATE, build_tokenizer

    student = tmp_path / "stripping"
    shutil.copytree(kd_root / "student", student)
    build_tokenizer(student, chat_template=STRIPPING_CHAT_TEMPLATE)
    res, _, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root, str(student)))
    assert res.exit_code == 1 and checks["think"]["status"] == "fail", res.output


def test_memory_estimate_drops_with_a_4bit_teacher_and_names_the_options(kd_root, tmp_path):
    budget = "0.0229"  # GiB: above the tiny run with a 4-bit teacher (~22.5 MiB), below it in fp32 (~24.6 MiB)
    res16, full, checks = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root), "--gpu-gib", budget)
    res4, quant, _ = doctor(tmp_path, "--config", write_recipe(tmp_path / "r.yml", kd_root, teacher_load_in_4bit=True),
                            "--gpu-gib", budget)
    assert quant["memory"]["parts"]["teacher weights"] < full["memory"]["parts"]["teacher weights"] / 4
    assert quant["memory"]["bytes"] < full["memory"]["bytes"]
    assert res16.exit_code == 1 and checks["memory"]["status"] == "fail", res16.output
    settings = {o["setting"]: o["gib"] for o in full["memory"]["options"]}
    assert settings["distill.teacher_load_in_4bit: true"] == pytest.approx(quant["memory"]["gib"], rel=1e-6)
    assert any(s.startswith("distill.teacher_logits") for s in settings) and "teacher_load_in_4bit" in res16.output


def test_bad_input_is_one_line_exit_2(kd_root, tmp_path):
    for args, name in ((["--config", tmp_path / "missing.yml"], "missing.yml"),
                       (["--config", write_recipe(tmp_path / "r.yml", kd_root, temprature=2.0)], "temprature")):
        res = cli("doctor", *args)
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert res.exit_code == 2 and len(lines) == 1 and name in lines[0], res.output
