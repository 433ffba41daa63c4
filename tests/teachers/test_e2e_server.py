"""``axolotl.cli.train`` with the served tiny teacher (the project's server on a free 127.0.0.1 port):
QLoRA (bitsandbytes on CPU, a 64-wide pair), sample packing, gradient accumulation 2, the
read-ahead; and a server that tokenises differently stops the run before training with exit code 2
and one line naming the URL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from axolotl_runs import REPO, SUBPROCESS_ENV, run_axolotl_train, write_recipe
from served_teacher import faults, serve, teacher_with_other_tokenizer

pytestmark = pytest.mark.slow
TWIN = REPO / "tests/configs/teacher_server_tiny.yml"


def recipe(tmp_path, student, data, url, **overrides):
    import yaml

    server = yaml.safe_load(TWIN.read_text())["distill"]["teacher_server"]
    return write_recipe(
        TWIN, tmp_path / "served.yml", base_model=str(student), distill={"teacher_server": {**server, "url": url}},
        datasets=[{"path": str(data), "type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]}],
        output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prepared"), **overrides,
    )


def test_train_qlora_with_served_teacher(tmp_path, arithmetic_data):
    from distill_plugin.testing.tiny import build_pair

    teacher, student = build_pair(tmp_path / "pair64", teacher_hidden=64, student_hidden=64)
    with serve(teacher, "--served-model-name", "tiny-teacher", "--max-logprobs", "16") as url:
        cfg = recipe(tmp_path, student, arithmetic_data, url, load_in_4bit=True, adapter="qlora")
        output, logs = run_axolotl_train(cfg, cwd=tmp_path)
        served = faults(url)["completions"]
    assert "teacher = served http://127.0.0.1" in output and "top-16 via prompt_logprobs" in output
    assert len(logs) == 6
    for entry in logs:
        assert entry["kd_loss"] > 0 and entry["ce_loss"] > 0 and entry["grad_norm"] > 0 and entry["teacher_wait_s"] >= 0, entry
    # 6 steps × 2 packed micro-batches of several documents, plus read-ahead and the start-up probes
    assert served > 12, served
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_server_with_another_tokenizer_stops_the_run(tmp_path, tiny_pair, arithmetic_data):
    teacher, student = tiny_pair
    other = teacher_with_other_tokenizer(teacher, tmp_path / "other")
    with serve(other, "--served-model-name", "tiny-teacher", "--max-logprobs", "16") as url:
        cfg = recipe(tmp_path, student, arithmetic_data, url)
        proc = subprocess.run([sys.executable, "-m", "axolotl.cli.train", str(cfg)], cwd=tmp_path, env=SUBPROCESS_ENV,
                              capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distill_plugin: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and url in errors[0] and "tokenises differently" in errors[0], errors
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_two_processes_each_ask_for_their_own_batches(tmp_path, tiny_pair, arithmetic_data):
    """DDP (2 CPU processes, gloo): every rank connects and sends its own batches' requests."""
    from axolotl_runs import run_axolotl_train_two_processes

    teacher, student = tiny_pair
    with serve(teacher, "--served-model-name", "tiny-teacher", "--max-logprobs", "16") as url:
        cfg = recipe(tmp_path, student, arithmetic_data, url, max_steps=3)
        output, logs = run_axolotl_train_two_processes(cfg, tmp_path)
        served = faults(url)["completions"]
    assert "teacher = served http://127.0.0.1" in output, output[-3000:]  # logged by the main process
    assert len(logs) == 3 and all(e["kd_loss"] > 0 and e["grad_norm"] > 0 for e in logs), logs
    # each rank: 2 start-up probes (preflight, trainer) and ≥ 1 request per micro-batch (3 steps × 2)
    assert served >= 2 * (2 + 3 * 2), served
