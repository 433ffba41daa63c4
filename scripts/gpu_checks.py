"""GPU check for issue #17: the fused KD loss under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 (one GPU, one
process each) gives the same per-step loss, grad norm and components as the plain run.

    bash scripts/gpu_checks.sh [WORKDIR]          # or: python scripts/gpu_checks.py WORKDIR

Trains recipes/tiny/logit_kd.yml (the tiny pair, fp32, 4 steps, sequential sampling) through
``accelerate launch -m axolotl.cli.train`` once per engine and prints a table; exits 1 on a
mismatch (rel. 1e-3), 0 when every engine that ran matched. ZeRO rows say SKIPPED where deepspeed is
not installed (``pip install deepspeed``). Needs no network: the tiny models are built locally.
``GPU_CHECKS_ONLY=plain,fsdp2`` runs a subset.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from distill_plugin.testing.runs import SUBPROCESS_ENV, parse_logs, write_recipe

REPO = Path(__file__).resolve().parents[1]

KEYS = ("loss", "grad_norm", "kd_loss", "ce_loss")
FSDP2 = {"fsdp_version": 2, "fsdp_config": {"offload_params": False, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                             "transformer_layer_cls_to_wrap": "Qwen2DecoderLayer",
                                             "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}}
# name: (engine keys, the run it must match); "_tied" runs use the tied-embedding student
ENGINES = {
    "plain": ({}, None),
    "plain_tied": ({}, None),
    "zero2": ({"deepspeed": str(REPO / "scripts" / "ds_configs" / "zero2.json")}, "plain"),
    "zero3": ({"deepspeed": str(REPO / "scripts" / "ds_configs" / "zero3_bf16.json")}, "plain"),
    "zero3_tied": ({"deepspeed": str(REPO / "scripts" / "ds_configs" / "zero3_bf16.json")}, "plain_tied"),
    "fsdp2": (FSDP2, "plain"),
    "fsdp2_tied": (FSDP2, "plain_tied"),
}


def run(work: Path, name: str, engine: dict) -> list[dict] | str:
    if "deepspeed" in engine and importlib.util.find_spec("deepspeed") is None:
        return "SKIPPED (deepspeed not installed)"
    pair = work / ("tiny_tied" if name.endswith("_tied") else "tiny")
    recipe = write_recipe(
        REPO / "recipes" / "tiny" / "logit_kd.yml", work / f"{name}.yml",
        base_model=str(pair / "student"), distill={"teacher": str(pair / "teacher")},
        datasets=[{"path": str(work / "tiny" / "data.jsonl"), "type": "chat_template", "field_messages": "messages",
                   "roles_to_train": ["assistant"]}],
        output_dir=str(work / name), dataset_prepared_path=str(work / f"{name}_prepared"),
        max_steps=4, micro_batch_size=4, curriculum_sampling=True, save_steps=1000, **engine)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "axolotl.cli.train", str(recipe)]
    proc = subprocess.run(cmd, cwd=work, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=1200)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return f"FAILED (exit {proc.returncode}, see {work / f'{name}.log'})"
    return parse_logs(proc.stdout + proc.stderr)


def main(work: Path) -> int:
    from distill_plugin.testing.tiny import build_model, build_tokenizer, prepare_tiny_run

    work.mkdir(parents=True, exist_ok=True)
    prepare_tiny_run(work / "tiny")
    tok = build_tokenizer()  # the same pair with a tied student (Qwen2.5-0.5B/1.5B style)
    build_model(work / "tiny_tied" / "teacher", tok, hidden_size=48, seed=1)
    build_model(work / "tiny_tied" / "student", tok, hidden_size=32, seed=2, tie_word_embeddings=True)
    only = [n for n in os.environ.get("GPU_CHECKS_ONLY", "").split(",") if n]
    results = {name: run(work, name, engine) for name, (engine, _) in ENGINES.items() if not only or name in only}
    failed = False
    print(f"{'engine':<12} {'step':>4} " + " ".join(f"{k:>12}" for k in KEYS) + "  match")
    for name, logs in results.items():
        base = results.get(ENGINES[name][1]) if ENGINES[name][1] else logs
        if isinstance(logs, str) or isinstance(base, str) or base is None:
            why = logs if isinstance(logs, str) else f"reference {ENGINES[name][1]}: {base or 'not run'}"
            print(f"{name:<12} {why}")
            failed |= why.startswith(("FAILED", "reference"))
            continue
        for step, (a, b) in enumerate(zip(base, logs), 1):
            ok = all(abs(b[k] - a[k]) <= 1e-3 * abs(a[k]) + 1e-6 for k in KEYS)
            failed |= not ok or len(logs) != len(base)
            print(f"{name:<12} {step:>4} " + " ".join(f"{b[k]:>12.6g}" for k in KEYS) + f"  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/distill_gpu_checks")))
