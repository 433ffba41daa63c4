"""``distill-data generate`` into a small real filesystem (a tmpfs mounted for the test; skipped where
mounting is not permitted): a full disk at the first row, and a run whose measured rows will not fit,
each stop with one line and exit 2, keeping the rows written (no torn line); with space freed the
same command completes, every prompt once."""

from __future__ import annotations

import json
import subprocess
import sys

from dp_helpers import subprocess_env, write_jsonl
from small_fs import fill, small_filesystem


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_generate_stops_in_one_line_on_a_full_disk_and_resumes(tmp_path, tiny_student):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"id": f"p{i}", "problem": f"What is {i}+{i % 7}?", "answer": str(i + i % 7)} for i in range(40)])
    with small_filesystem(96) as fs:
        out, filler = fs / "gen", fs / "filler"
        cmd = [sys.executable, "-m", "data_prep.cli", "generate", str(prompts), "-o", str(out), "--model",
               str(tiny_student), "-n", "2", "--max-tokens", "40", "--seed", "0"]

        def run():
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env())
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            return proc, errors

        fill(filler)  # nothing left: the settings file cannot be written
        full, errors = run()
        assert full.returncode == 2 and errors[0].startswith(f"error: {out / '_settings.generate.json'}: no space left"), errors
        filler.unlink()
        fill(filler, leave=4096)  # one page: the settings file; the first row meets ENOSPC
        full, errors = run()
        assert full.returncode == 2 and len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert errors[0].startswith(f"error: {out / 'generations.jsonl'}: no space left on device (")
        assert (out / "generations.jsonl").read_bytes() == b""  # no torn line

        filler.unlink()
        fill(filler, leave=24 * 1024)  # room for the first rows, not for all 40
        short, errors = run()
        assert short.returncode == 2 and len(errors) == 1, short.stderr[-3000:]
        assert " free, but this run's output is estimated at " in errors[0], errors
        kept = rows(out / "generations.jsonl")
        assert len(kept) == 4 and all(len(r["generations"]) == 2 for r in kept)

        filler.unlink()
        done, errors = run()
        assert done.returncode == 0 and not errors, done.stderr[-3000:]
        ids = [r["id"] for r in rows(out / "generations.jsonl")]
        assert sorted(ids) == sorted(f"p{i}" for i in range(40)) and ids[:4] == [r["id"] for r in kept]
