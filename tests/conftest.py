"""Shared fixtures: a locally built tiny tokenizer, teacher/student pairs and the arithmetic data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A tiny teacher (hidden 48) and student (hidden 32) sharing the tiny tokenizer."""
    from distill_plugin.tiny import build_pair

    return build_pair(tmp_path_factory.mktemp("pair"), teacher_hidden=48, student_hidden=32)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory):
    from distill_plugin.demo.task import make_split, write_jsonl

    return write_jsonl(make_split(48, seed=0), tmp_path_factory.mktemp("data") / "train.jsonl")


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


def run_axolotl_train(recipe: Path, cwd: Path, launcher: list[str] | None = None, timeout: int = 600):
    """Run ``axolotl.cli.train`` in a subprocess; return (stdout+stderr, parsed train-step logs)."""
    cmd = (launcher or [sys.executable]) + ["-m", "axolotl.cli.train", str(recipe)]
    proc = subprocess.run(cmd, cwd=cwd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"axolotl.cli.train failed ({proc.returncode}):\n{output[-6000:]}"
    return output, parse_logs(output)


def parse_logs(output: str) -> list[dict]:
    """The Trainer's per-step log dicts (those with a 'loss') from captured output, in order."""
    logs = []
    for match in re.finditer(r"\{'loss': [^}]*\}", output):
        entry = {}
        for key, value in re.findall(r"'([^']+)': '?([-\d.e+]+)'?", match.group(0)):
            entry[key] = float(value)
        logs.append(entry)
    return logs
