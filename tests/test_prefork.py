"""The fork server the quality benchmark and the demo train their students from (``demo/prefork.py``):
real server subprocess, real forked children running a module as ``python -m`` would. The
Axolotl preload is skipped here (``imports=False``); the benchmark's quick run covers it."""

from __future__ import annotations

import os
import time

from distill_plugin.demo.prefork import Prefork

MODULE = '''
import os, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "main", __name__)
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "sleep":
    time.sleep(60)
if mode == "raise":
    raise ValueError("boom")
sys.exit(int(mode))
'''


def wait(child, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while (code := child.poll()) is None:
        assert time.monotonic() < end, f"{child.name} still running"
        time.sleep(0.05)
    return code


def test_children_run_as_python_dash_m_with_their_own_log_cwd_and_exit_status(tmp_path):
    (tmp_path / "kid.py").write_text(MODULE)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    logs = {name: tmp_path / f"{name}.log" for name in ("ok", "three", "raise", "sleep")}
    with Prefork(env, tmp_path, tmp_path / "server.log", imports=False) as server:
        # Requests sent back to back (one line each): none waits behind another in a buffer.
        kids = {name: server.start(name, ["kid", {"ok": "0", "three": "3"}.get(name, name)], logs[name], work)
                for name in logs}
        assert len({kid.pid for kid in kids.values()}) == 4 and os.getpid() not in {k.pid for k in kids.values()}
        assert wait(kids["ok"]) == 0 and wait(kids["three"]) == 3 and wait(kids["raise"]) == 1
        assert kids["sleep"].poll() is None
        kids["sleep"].terminate()
        assert wait(kids["sleep"]) == -15
    ok = logs["ok"].read_text()
    assert f"argv ['0'] cwd {work} main __main__" in ok and "to stderr" in ok
    assert "ValueError: boom" in logs["raise"].read_text() and "Traceback" in logs["raise"].read_text()
    assert server.proc.returncode == 0


def test_leaving_stops_the_children_still_running(tmp_path):
    (tmp_path / "kid.py").write_text(MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with Prefork(env, tmp_path, tmp_path / "server.log", imports=False) as server:
        kid = server.start("sleep", ["kid", "sleep"], tmp_path / "sleep.log", tmp_path)
    assert server.proc.returncode == 0
    try:
        os.kill(kid.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the server left a child running"
