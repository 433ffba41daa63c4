"""Kill-and-resume and sharding: every prompt ends up exactly once.

The kill test runs the real CLI in a subprocess and SIGKILLs it at two different points (after
the first rows are written), plus a simulated kill in the middle of a write (a torn last line),
then restarts to completion.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from dp_helpers import read_jsonl, subprocess_env, write_jsonl
from distill_plugin.generation import SamplingParams
from distill_plugin.generation.hf import HFBackend
from data_prep.generate import GenerateConfig, generate, merge


def _prompts(tmp_path, n=24):
    return write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "question": f"What is {i}+{i}?"} for i in range(n)])


def _cmd(prompts, out, model):
    return [sys.executable, "-m", "data_prep.cli", "generate", str(prompts), "-o", str(out),
            "--model", str(model), "-n", "2", "--max-tokens", "6", "--batch-size", "1",
            "--chunk-size", "1", "--seed", "0"]


def _run_until(cmd, path, min_lines, timeout=120):
    """Start ``cmd``; SIGKILL it as soon as ``path`` has ``min_lines`` lines (or it finishes)."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if path.exists() and path.read_bytes().count(b"\n") >= min_lines:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    return proc.returncode


def test_kill_and_resume_no_loss_no_duplicate(tmp_path, tiny_teacher):
    prompts, out = _prompts(tmp_path), tmp_path / "gen"
    path = out / "generations.jsonl"
    assert _run_until(_cmd(prompts, out, tiny_teacher), path, 3) == -signal.SIGKILL
    n1 = path.read_bytes().count(b"\n")
    assert _run_until(_cmd(prompts, out, tiny_teacher), path, n1 + 4) == -signal.SIGKILL
    # simulate a kill in the middle of a write: a torn partial row at the end of the file
    with open(path, "ab") as fh:
        fh.write(b'{"id": "q23", "generations": [{"text": "half a ro')
    done = subprocess.run(_cmd(prompts, out, tiny_teacher), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = Counter(r["id"] for r in read_jsonl(path))
    assert set(ids) == {f"q{i}" for i in range(24)} and max(ids.values()) == 1
    assert all(len(r["generations"]) == 2 for r in read_jsonl(path))


def test_shards_then_merge(tmp_path, tiny_teacher):
    prompts, out = _prompts(tmp_path, 10), tmp_path / "gen"
    cfg = GenerateConfig(model=str(tiny_teacher), sampling=SamplingParams(n=1, max_tokens=4, seed=0))
    backend = HFBackend(str(tiny_teacher))
    sizes = [generate(prompts, out, cfg, shard=f"{i}/3", backend=backend).rows_out for i in range(3)]
    assert sum(sizes) == 10 and all(sizes)
    assert len(list(out.glob("generations-*-of-00003.jsonl"))) == 3
    rep = merge(out, tmp_path / "all.jsonl")
    assert rep.rows_out == 10
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "all.jsonl")) == sorted(f"q{i}" for i in range(10))
    # a re-run of any shard finds its ids done
    assert generate(prompts, out, cfg, shard="1/3", backend=backend).rows_out == 0


def test_torn_last_line_is_repaired_on_a_resume_with_nothing_to_do(tmp_path, tiny_teacher):
    prompts, out = _prompts(tmp_path, 3), tmp_path / "gen"
    cfg = GenerateConfig(model=str(tiny_teacher), sampling=SamplingParams(n=1, max_tokens=4, seed=0))
    assert generate(prompts, out, cfg).rows_out == 3
    path = out / "generations.jsonl"
    whole = path.read_bytes()
    with open(path, "ab") as fh:  # a kill mid-write, after the last prompt's row was already complete
        fh.write(b'{"id": "q2", "generations": [{"text": "half a ro')
    report = generate(prompts, out, cfg)
    assert report.rows_out == 0 and report.extra["already_done"] == 3
    assert path.read_bytes() == whole  # cut, though no work was left
