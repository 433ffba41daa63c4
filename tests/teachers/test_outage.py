"""A served teacher that goes away during training (``teacher_server.max_outage_s``, ``teachers.outage``),
on 127.0.0.1 with the project's server killed by SIGKILL mid-run: restarted, the run rides the
outage out and its per-step losses equal an uninterrupted run's; never back, the run saves its last
completed step, stops with one line and exit 2, and resuming against a live server reproduces the
uninterrupted run."""

from __future__ import annotations

import re
import threading
import time

import pytest
from transformers import AutoTokenizer, TrainerCallback

from served_teacher import Restartable

K = 8
MODEL = "tiny-teacher"
STEPS, KILL_AT = 8, 3


@pytest.fixture(scope="module")
def server(tiny_pair):
    served = Restartable(tiny_pair[0], "--served-model-name", MODEL, "--max-logprobs", str(K)).start()
    yield served
    served.kill()


class KillServer(TrainerCallback):
    """SIGKILL the server after optimizer step ``at``; start it again ``restart_after`` s later (None: never)."""

    def __init__(self, server, at: int, restart_after: float | None):
        self.server, self.at, self.restart_after = server, at, restart_after
        self.killed_at = self.restarted_at = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at and self.killed_at is None:
            self.server.kill()
            self.killed_at = time.monotonic()
            if self.restart_after is not None:
                threading.Timer(self.restart_after, self._restart).start()

    def _restart(self):
        self.server.start(wait=False)
        self.restarted_at = time.monotonic()


def make_trainer(tiny_pair, data, out, url, max_outage_s=300.0, callbacks=()):
    from datasets import load_dataset
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    dataset = load_dataset("json", data_files=str(data), split="train").select_columns(["messages"])
    args = SFTConfig(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", assistant_only_loss=True,
                     max_length=128, lr_scheduler_type="constant", seed=7, disable_tqdm=True)
    served = {"url": url, "model": MODEL, "top_k": K, "max_outage_s": max_outage_s}
    trainer = make_trl_trainer_class()(model=str(tiny_pair[1]), args=args, train_dataset=dataset, processing_class=tokenizer,
                                       distill_config={"teacher_server": served, "kd_weight": 0.5, "ce_weight": 0.5},
                                       callbacks=list(callbacks))
    # short backoff for the test: a restarted server is asked again within 2 s
    trainer.teacher_source.outage.backoff_s, trainer.teacher_source.outage.backoff_max_s = 0.1, 2.0
    trainer.teacher_source.backend.backoff_s = 0.05
    return trainer


def losses(trainer) -> dict[int, tuple[float, float]]:
    return {h["step"]: (h["loss"], h["kd_loss"]) for h in trainer.state.log_history if "loss" in h}


@pytest.fixture(scope="module")
def uninterrupted(tiny_pair, arithmetic_data, server, tmp_path_factory):
    trainer = make_trainer(tiny_pair, arithmetic_data, tmp_path_factory.mktemp("baseline"), server.url)
    trainer.train()
    trainer.teacher_source.close()
    assert len(losses(trainer)) == STEPS
    return trainer


def test_a_restarted_server_is_ridden_out_with_the_same_losses(tiny_pair, arithmetic_data, server, uninterrupted, tmp_path):
    kill = KillServer(server, KILL_AT, restart_after=3.0)
    trainer = make_trainer(tiny_pair, arithmetic_data, tmp_path, server.url, callbacks=[kill])
    started = time.monotonic()
    trainer.train()
    source = trainer.teacher_source
    source.close()
    assert kill.restarted_at is not None and server.up()
    assert losses(trainer) == losses(uninterrupted)  # every step, bit for bit
    assert len(source.outage.outages) == 1 and source.outage.outages[0] >= 3.0  # at least the restart delay
    waits = [h["teacher_wait_s"] for h in trainer.state.log_history if "teacher_wait_s" in h]
    assert max(waits) >= 3.0 and max(waits) == max(waits[KILL_AT:]), waits  # the outage shows after the kill
    print(f"outage ridden out: {source.outage.outages[0]:.1f} s (server down→up {kill.restarted_at - kill.killed_at:.1f} s "
          f"+ its start), run {time.monotonic() - started:.1f} s, teacher_wait_s max {max(waits):.1f} s")


def test_a_server_that_never_returns_stops_with_a_checkpoint_and_resumes(tiny_pair, arithmetic_data, server,
                                                                         uninterrupted, tmp_path, capsys):
    kill = KillServer(server, KILL_AT, restart_after=None)
    trainer = make_trainer(tiny_pair, arithmetic_data, tmp_path, server.url, max_outage_s=4.0, callbacks=[kill])
    with pytest.raises(SystemExit) as exit_:
        trainer.train()
    trainer.teacher_source.close()
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill_plugin: error:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"distill.teacher_server: {server.url} unreachable for " in line and "(max_outage_s 4)" in line, line
    step = int(re.search(r"saved step (\d+) as ", line).group(1))
    checkpoint = tmp_path / f"checkpoint-{step}"
    assert KILL_AT <= step < STEPS and f"resume_from_checkpoint: {checkpoint}" in line, line
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "optimizer.pt").exists()

    server.start()
    resumed = make_trainer(tiny_pair, arithmetic_data, tmp_path, server.url)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed.teacher_source.close()
    assert losses(resumed) == losses(uninterrupted)  # the checkpoint's logged steps, then the resumed ones


@pytest.mark.slow  # two processes that each import the Trainer: about three minutes on the shared 2-core machine
def test_under_ddp_every_process_stops_at_the_same_step(tiny_pair, arithmetic_data, server, tmp_path):
    """Two gloo processes, each with its own server; rank 1's is killed for good while rank 0's keeps
    answering: both stop at the same step with exit code 2 (rank 0 is not left in the next step's
    gradient all-reduce), the checkpoint holds both processes' RNG states, one line is printed."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from axolotl_runs import SUBPROCESS_ENV
    from test_sharded import free_port

    other = Restartable(tiny_pair[0], "--served-model-name", MODEL, "--max-logprobs", str(K)).start()
    worker = Path(__file__).with_name("outage_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(worker), *map(str, tiny_pair), str(arithmetic_data), server.url, other.url, str(tmp_path),
           str(other.proc.pid)]
    proc = subprocess.Popen(cmd, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:  # a process left in a collective: end the launcher and both ranks
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the DDP run hung:\n{output[-4000:]}")
    finally:
        other.kill()
    stops = sorted(re.findall(r"STOPPED rank=(\d) step=(\d+) code=(\d+)", output))
    assert [rank for rank, _, _ in stops] == ["0", "1"], output[-5000:]
    assert len({step for _, step, _ in stops}) == 1 and {code for _, _, code in stops} == {"2"}, stops
    step = int(stops[0][1])
    checkpoint = tmp_path / f"checkpoint-{step}"
    assert step >= KILL_AT and (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    lines = [line for line in output.splitlines() if "distill_plugin: error:" in line]
    assert len(lines) == 1 and f"saved step {step} as {checkpoint}" in lines[0], lines
