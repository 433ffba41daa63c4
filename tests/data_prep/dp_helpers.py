"""Shared helpers for the data_prep tests (fixtures are in conftest.py).

The teacher is the char-level tiny Qwen2 from ``distill_plugin.testing.tiny`` trained for 200 AdamW steps
(~5 s on CPU) to answer four fixed arithmetic prompts with ``<think>\\nR\\n</think>\\n\\n\\boxed{A}``.
It is *memorised*, not intelligent: on those prompts it produces well-formed R1-style output so
the verification/filter/export path runs on real generations; on any other prompt it produces
a memorised answer or garbage (which the filter must drop).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

R1_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
TRAINED = [("What is 2+3?", "2+3=5", "5"), ("What is 4*2?", "4*2=8", "8"),
           ("What is 9-7?", "9-7=2", "2"), ("What is 1+1?", "1+1=2", "2")]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false", AXOLOTL_DO_NOT_TRACK="1", OMP_NUM_THREADS="1",
               AXOLOTL_DATASET_NUM_PROC="1")  # no process pools on tiny data (tests/axolotl_runs.py)
    return env


def train_teacher(out_dir: Path, steps: int = 200) -> Path:
    """Memorise the TRAINED trajectories (prompt → `<think>…</think>\\boxed{}`) with the demo's trainer."""
    from distill_plugin.demo.core import encode, train_causal_lm
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(None, tok, hidden_size=64, seed=0)
    rows = [{"messages": [{"role": "user", "content": f"{q}\n\n{R1_SUFFIX}"},
                          {"role": "assistant", "content": f"<think>\n{r}\n</think>\n\n\\boxed{{{a}}}"}],
             "answer": a} for q, r, a in TRAINED]
    train_causal_lm(model, [encode(tok, row) for row in rows], tok.pad_token_id, steps=steps, batch_size=4, lr=3e-3)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def openai_server(model_dir, *args: str, env: dict | None = None):
    """Run tests/data_prep/openai_server.py on a free loopback port; yield its base URL (no /v1)."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("openai_server.py")), str(model_dir),
                             "--port", str(port), *args], env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded: up to ~2 min for imports and model load on a busy machine
            if proc.poll() is not None:
                raise RuntimeError(f"server died: {proc.stdout.read()[-3000:]}")
            try:
                httpx.get(url + "/stats", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_recipe(path: Path, root: Path, student: str = "student", **distill) -> Path:
    """A minimal Axolotl recipe of the tiny pair under ``root`` (``kd_root``): fp32 teacher, its data."""
    import yaml

    recipe = {"base_model": str(root / student), "plugins": ["distill_plugin.DistillPlugin"],
              "distill": {"teacher": str(root / "teacher"), "teacher_dtype": "float32", **distill},
              "datasets": [{"path": str(root / "data.jsonl"), "type": "chat_template"}],
              "chat_template": "tokenizer_default"}
    path.write_text(yaml.safe_dump(recipe))
    return path
