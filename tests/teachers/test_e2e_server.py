"""``axolotl.cli.train`` on the derived twin of ``recipes/teacher_server_qlora.yml``, its teacher the
tiny teacher served by the project's server on a free 127.0.0.1 port: a 4-bit QLoRA student
(bitsandbytes on CPU), sample packing, gradient accumulation, the read-ahead, the recipe's
``# twin-checks:``; the same twin over two processes (each rank asks for its own batches). A server
that tokenises differently stops the twin's run before any data or model loads: that is checked
in-process (Axolotl's loader and the plugin's hooks) in ``test_server_teacher.py``."""

from __future__ import annotations

import pytest

from axolotl_runs import REPO
from served_teacher import faults, serve, set_faults
from twin_runs import check_promises, train_twin

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "teacher_server_qlora.yml"
NAME = "tiny-teacher"
SERVE = ("--served-model-name", NAME, "--max-logprobs", "64")  # the recipe asks for the top 64
KEY = {"TEACHER_API_KEY": "test-key"}  # the recipe reads its API key from this variable


@pytest.fixture(scope="module")
def served(twin_root):
    """The twins' teacher, served once for this module's runs (a server start costs a minute on a loaded CPU)."""
    with serve(twin_root / "teacher", *SERVE) as url:
        yield url


def train_served(served, twin_root, workdir, **kwargs):
    set_faults(served)  # restarts the request count
    run = train_twin(RECIPE, twin_root, workdir, env=KEY, teacher_server={"url": served, "model": NAME}, **kwargs)
    return run, faults(served)["completions"]


def test_train_qlora_with_served_teacher(tmp_path, twin_root, served):
    run, requests = train_served(served, twin_root, tmp_path)
    check_promises(RECIPE, run)
    assert "teacher = served http://127.0.0.1" in run.output and "top-64 via prompt_logprobs" in run.output
    for entry in run.logs:
        assert entry["kd_loss"] > 0 and entry["ce_loss"] > 0 and entry["grad_norm"] > 0 and entry["teacher_wait_s"] >= 0, entry
    # steps × accumulated packed micro-batches of several documents, plus read-ahead and the start-up probes
    assert requests > run.config["max_steps"] * run.config["gradient_accumulation_steps"], requests


def test_two_processes_each_ask_for_their_own_batches(tmp_path, twin_root, served):
    """DDP (2 CPU processes, gloo): every rank connects and sends its own batches' requests."""
    run, requests = train_served(served, twin_root, tmp_path, overrides={"max_steps": 3}, processes=2)
    assert "teacher = served http://127.0.0.1" in run.output, run.output[-3000:]  # logged by the main process
    assert run.probe["world_size"] == 2 and all(e["kd_loss"] > 0 and e["grad_norm"] > 0 for e in run.logs), run.logs
    # each rank: 2 start-up probes (preflight, trainer) and ≥ 1 request per micro-batch
    assert requests >= 2 * (2 + 3 * run.config["gradient_accumulation_steps"]), requests
