"""Fault matrix, verify row (``distill-data verify``, the real CLI in a subprocess): killed (SIGKILL)
in the middle of writing a row, the same command resumes to the rows of an uninterrupted run, byte
for byte (the torn row cut, no row twice, none lost); on a full disk (a small tmpfs mounted for the
test, skipped where mounting is not permitted) it stops with one line naming the file, exit 2, no
torn row left, and once there is space the same command completes to the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from small_fs import fill, small_filesystem

ROWS = 12
KILL_AT = 5
GEN = {"think_closed": True, "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 90}

# The CLI with the appender SIGKILLing its own process half-way through writing row KILL_AT.
KILLED_VERIFY = """
import os, signal, sys
from distill_plugin.jsonl import JsonlAppender, dumps

real, kill_at = JsonlAppender.write, int(sys.argv[1])

def write(self, row):
    if self.count + 1 == kill_at:
        line = (dumps(row) + "\\n").encode()
        self.fh.write(line[: len(line) // 2])
        self.fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, row)

JsonlAppender.write = write
sys.argv = ["distill-data", *sys.argv[2:]]
from data_prep.cli import main
main()
"""


def generations(path):
    """ROWS maths rows, two samples each (one right, one wrong), ~1 kB per row."""
    rows = []
    for i in range(ROWS):
        answers = [str(2 * i), str(2 * i + 1)]
        gens = [{**GEN, "text": f"<think>\n{'step ' * 80}\n</think>\n\n\\boxed{{{a}}}", "reasoning": "step " * 80,
                 "content": f"\\boxed{{{a}}}"} for a in answers]
        rows.append({"id": f"r{i}", "prompt": f"What is {i}+{i}?", "answer": str(2 * i), "generations": gens})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def verify(src, out, prefix=()):
    cmd = [sys.executable, *prefix, "verify", str(src), "-o", str(out), "--workers", "1"]
    if not prefix:
        cmd[1:1] = ["-m", "data_prep.cli"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The generations and the verified rows of an uninterrupted run."""
    src = generations(tmp_path_factory.mktemp("gen") / "generations.jsonl")
    out = tmp_path_factory.mktemp("whole")
    done = verify(src, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return src, (out / "verified.jsonl").read_bytes()


def test_a_killed_verify_resumes_to_the_same_rows(reference, tmp_path):
    src, whole = reference
    out = tmp_path / "killed"
    killed = verify(src, out, prefix=("-c", KILLED_VERIFY, str(KILL_AT)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    torn = (out / "verified.jsonl").read_bytes()
    assert torn.count(b"\n") == KILL_AT - 1 and not torn.endswith(b"\n")  # four rows and half of the fifth
    resumed = verify(src, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "verified.jsonl").read_bytes() == whole
    assert json.loads((out / "_report.verify.json").read_text())["already_done"] == KILL_AT - 1


def test_verify_stops_in_one_line_on_a_full_disk_and_resumes(reference):
    src, whole = reference
    with small_filesystem(96) as fs:
        out, filler = fs / "verified", fs / "filler"
        fill(filler)  # nothing left: the settings file cannot be written
        full = verify(src, out)
        assert full.returncode == 2 and error_lines(full)[0].startswith(f"error: {out / '_settings.verify.json'}: no space left")
        filler.unlink()
        fill(filler, leave=8192)  # a page for the settings file, one for a few rows
        full = verify(src, out)
        lines = error_lines(full)
        assert full.returncode == 2 and len(lines) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert lines[0].startswith(f"error: {out / 'verified.jsonl'}: no space left on device (")
        kept = (out / "verified.jsonl").read_bytes()
        assert 0 < kept.count(b"\n") < ROWS and kept.endswith(b"\n") and whole.startswith(kept)  # no torn row

        filler.unlink()
        done = verify(src, out)
        assert done.returncode == 0 and not error_lines(done), done.stderr[-3000:]
        assert (out / "verified.jsonl").read_bytes() == whole
