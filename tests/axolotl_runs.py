"""Helpers for tests that drive ``axolotl.cli.train`` in a subprocess (recipes, env, log parsing)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "OMP_NUM_THREADS": "1",
}


def write_recipe(src: str | Path, dst: Path, **overrides) -> Path:
    """Copy a recipe with top-level keys overridden (``distill`` entries are merged)."""
    cfg = yaml.safe_load(Path(src).read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    dst.write_text(yaml.safe_dump(cfg))
    return dst


def run_axolotl_train(recipe: Path, cwd: Path, launcher: list[str] | None = None, timeout: int = 600, env: dict | None = None):
    """Run ``axolotl.cli.train`` in a subprocess; return (stdout+stderr, parsed train-step logs)."""
    cmd = (launcher or [sys.executable]) + ["-m", "axolotl.cli.train", str(recipe)]
    proc = subprocess.run(cmd, cwd=cwd, env={**SUBPROCESS_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"axolotl.cli.train failed ({proc.returncode}):\n{output[-6000:]}"
    return output, parse_logs(output)


def run_axolotl_train_two_processes(recipe: Path, cwd: Path, timeout: int = 600):
    """``run_axolotl_train`` under ``torch.distributed.run`` with 2 CPU processes (gloo)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    # ACCELERATE_USE_CPU makes each rank join a gloo process group on CPU.
    return run_axolotl_train(recipe, cwd, launcher=launcher, timeout=timeout, env={"ACCELERATE_USE_CPU": "1"})


def assert_two_processes_match_one(make_recipe, cwd: Path, keys=("loss", "grad_norm", "kd_loss", "ce_loss")):
    """Same global batch (4 = 1×4 = 2×2), sequential sampling: same logged values per step.

    ``make_recipe(name, **overrides)`` writes a recipe whose outputs go under ``name``.
    """
    import pytest

    common = dict(max_steps=4, curriculum_sampling=True, save_steps=1000)
    _, logs_one = run_axolotl_train(make_recipe("one", micro_batch_size=4, **common), cwd)
    _, logs_two = run_axolotl_train_two_processes(make_recipe("two", micro_batch_size=2, **common), cwd)
    assert len(logs_one) == len(logs_two) == 4
    for a, b in zip(logs_one, logs_two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=2e-3), (key, a, b)


def parse_logs(output: str) -> list[dict]:
    """The Trainer's per-step log dicts (those with a 'loss') from captured output, in order."""
    logs = []
    for match in re.finditer(r"\{'loss': [^}]*\}", output):
        entry = {}
        for key, value in re.findall(r"'([^']+)': '?([-\d.e+]+)'?", match.group(0)):
            entry[key] = float(value)
        logs.append(entry)
    return logs
