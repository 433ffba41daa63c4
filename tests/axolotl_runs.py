"""Helpers for tests that drive ``axolotl.cli.train`` in a subprocess (recipes, env, log parsing)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from distill_plugin.testing.runs import SUBPROCESS_ENV, override, parse_logs, write_recipe  # noqa: F401  (the tests import them from here)

REPO = Path(__file__).resolve().parents[1]


# The e2e tests that check learning (the loss of a random tiny student must fall within 20 steps)
# run a recipe's twin with these settings on top: more steps, a higher constant LR, larger batches, a
# fp32 teacher, several loss chunks, no packing and no eval unless a test asks for them.
LEARNING = dict(
    max_steps=20, micro_batch_size=4, gradient_accumulation_steps=1, learning_rate=0.003, lr_scheduler="constant",
    warmup_ratio=0.0, weight_decay=0.0, sample_packing=False, val_set_size=0.0, eval_steps=None, save_steps=20,
    gradient_checkpointing=False, dataloader_num_workers=0, seed=0, distill={"teacher_dtype": "float32", "chunk_size": 64},
)


# The offline recipes train a QLoRA student; tests on the narrow tiny pairs (not multiples of 64, which
# bitsandbytes' 4-bit CPU kernel needs) fine-tune it in full instead.
OFFLINE_FULL_FINETUNE = dict(load_in_4bit=False, adapter=None, lora_r=None, lora_alpha=None, lora_dropout=None,
                             lora_target_linear=None)


def learning(**overrides) -> dict:
    """``LEARNING`` with ``overrides`` on top (``distill`` entries merged)."""
    merged = {**LEARNING, **overrides}
    merged["distill"] = {**LEARNING["distill"], **overrides.get("distill", {})}
    return merged


def twin_of(recipe: str, dst: Path, student, data, teacher=None, teacher_logits=None, **overrides) -> Path:
    """The tiny twin of ``recipes/<recipe>`` (``distill_plugin.testing.twins.derive_twin``) written to
    ``dst``, with ``overrides`` on top (as ``write_recipe``); prepared data in ``<dst>_prepared``."""
    from distill_plugin.testing.twins import Fixtures, derive_twin

    fixtures = Fixtures(student=student, data=data, workdir=dst.parent / dst.stem, teacher=teacher,
                        teacher_logits=teacher_logits, prepared=dst.parent / f"{dst.stem}_prepared")
    derive_twin(REPO / "recipes" / recipe, fixtures).write(dst)
    return write_recipe(dst, dst, **overrides)


def preflight(path, capsys) -> str | None:
    """In-process, what ``axolotl.cli.train`` does before it tokenises the data or loads a model: Axolotl's
    config loader (``load_cfg``: the plugin's ``register``, the validation) and the pre-data hook
    (``PluginManager.load_datasets``). Returns the plugin's one-line error (the CLI exits 2 with it:
    ``tests/test_preflight.py`` runs it once), or None when the config passes. ``capsys``: pytest's."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    try:
        cfg = load_cfg(str(path))
        assert PluginManager.get_instance().load_datasets(cfg) is None  # Axolotl still loads the data
    except SystemExit as exit_:
        assert exit_.code == 2
        # (Axolotl's log handlers, set up by an earlier test, may also write here: look for ours.)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill_plugin: error:")]
        assert len(lines) == 1, lines
        return lines[0]
    return None


def run_axolotl_train(recipe: Path, cwd: Path, launcher: list[str] | None = None, timeout: int = 600, env: dict | None = None):
    """Run ``axolotl.cli.train`` in a subprocess; return (stdout+stderr, parsed train-step logs)."""
    cmd = (launcher or [sys.executable]) + ["-m", "axolotl.cli.train", str(recipe)]
    proc = subprocess.run(cmd, cwd=cwd, env={**SUBPROCESS_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"axolotl.cli.train failed ({proc.returncode}):\n{output[-6000:]}"
    return output, parse_logs(output)


def run_axolotl_train_two_processes(recipe: Path, cwd: Path, timeout: int = 600, env: dict | None = None):
    """``run_axolotl_train`` under ``torch.distributed.run`` with 2 CPU processes (gloo)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    # ACCELERATE_USE_CPU makes each rank join a gloo process group on CPU.
    return run_axolotl_train(recipe, cwd, launcher=launcher, timeout=timeout, env={"ACCELERATE_USE_CPU": "1", **(env or {})})


def assert_two_processes_match_one(make_recipe, cwd: Path, keys=("loss", "grad_norm", "kd_loss", "ce_loss")):
    """Same global batch (4 = 1×4 = 2×2), sequential sampling: same logged values per step.

    ``make_recipe(name, **overrides)`` writes a recipe whose outputs go under ``name`` ("one", "two");
    returns the two-process run's output.
    """
    import pytest

    common = dict(max_steps=4, curriculum_sampling=True, save_steps=1000)
    _, logs_one = run_axolotl_train(make_recipe("one", micro_batch_size=4, **common), cwd)
    output, logs_two = run_axolotl_train_two_processes(make_recipe("two", micro_batch_size=2, **common), cwd)
    assert len(logs_one) == len(logs_two) == 4
    for a, b in zip(logs_one, logs_two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=2e-3), (key, a, b)
    return output
