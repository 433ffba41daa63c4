"""Running ``axolotl.cli.train`` in a subprocess: its environment, recipes with keys overridden, and
the Trainer's per-step logs read back from its output (used by the tests and scripts/gpu_checks.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

# AXOLOTL_DATASET_NUM_PROC=1: Axolotl sizes its tokenisation workers and its sample-packing process
# pool (``pack_parallel``, re-created each time the sampler packs) by the CPU count. On the tiny
# datasets here the pools cost more than they save: one packing twin's run took 58 s → 39 s wall
# (logit_kd_qwen2_1p5b) and 68 s → 57 s (hidden_state_kd) with one process, on 2 shared cores. One
# process packs the same bins (the same groups, ``_process_group`` in turn) and tokenises the same rows.
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "OMP_NUM_THREADS": "1",
    "AXOLOTL_DATASET_NUM_PROC": "1",
}


def override(cfg: dict, **overrides) -> dict:
    """Top-level keys of ``cfg`` overridden in place (``distill`` entries are merged; an entry set to
    None is removed, so a setting one teacher source refuses can be taken out)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {k: v for k, v in {**cfg[key], **value}.items() if v is not None}
        else:
            cfg[key] = value
    return cfg


def write_recipe(src: str | Path, dst: Path, **overrides) -> Path:
    """Copy a recipe with top-level keys overridden (``override``)."""
    dst.write_text(yaml.safe_dump(override(yaml.safe_load(Path(src).read_text()), **overrides)))
    return dst


def parse_logs(output: str) -> list[dict]:
    """The Trainer's per-step log dicts (those with a 'loss') from captured output, in order."""
    logs = []
    for match in re.finditer(r"\{'loss': [^}]*\}", output):
        entry = {}
        for key, value in re.findall(r"'([^']+)': '?([-\d.e+]+)'?", match.group(0)):
            entry[key] = float(value)
        logs.append(entry)
    return logs
