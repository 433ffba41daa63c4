"""Hostile model-written programs are contained and reported as failures."""

import os
import socket
import threading
import time

import pytest

from data_prep.sandbox import Limits, isolation_level, run_python
from data_prep.verify_code import check, extract_code, normalize_tests, run_tests

FAST = Limits(wall_s=3, cpu_s=2, memory_mb=512, nproc=16, max_output_bytes=64 << 10, max_file_bytes=1 << 20)


def test_normal_program_runs():
    r = run_python("print(input()[::-1])", "abc\n", FAST)
    assert r.status == "ok" and r.stdout == "cba\n"


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run_python("while True: pass", "", FAST)
    assert r.status == "timeout" and time.monotonic() - t0 < 6


def test_sleeping_program_hits_wall_clock():
    r = run_python("import time; time.sleep(60)", "", Limits(wall_s=1, cpu_s=2))
    assert r.status == "timeout" and r.wall_s < 3


def test_fork_bomb_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_python(code, "", Limits(wall_s=2, cpu_s=2, nproc=16))
    assert r.status in ("timeout", "error", "killed")
    time.sleep(0.2)
    if isolation_level()["uid_drop"]:  # every process of the sandbox uids is gone
        from data_prep.sandbox import SANDBOX_SLOTS, SANDBOX_UID_BASE

        uids = range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_SLOTS)
        alive = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = os.stat(f"/proc/{d}")
                    state = open(f"/proc/{d}/stat").read().split(")")[-1].split()[0]
                except OSError:
                    continue
                if st.st_uid in uids and state != "Z":
                    alive.append(d)
        assert not alive


def test_escaped_session_child_killed():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\nprint('parent done')\n"
    r = run_python(code, "", FAST)
    assert r.status == "ok"
    # the grandchild escaped the process group; with a uid drop it is still killed by uid
    if isolation_level()["uid_drop"]:
        from data_prep.sandbox import SANDBOX_UID_BASE

        time.sleep(0.1)
        # nothing sleeping under any sandbox uid
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{d}").st_uid >= SANDBOX_UID_BASE:
                    assert open(f"/proc/{d}/stat").read().split(")")[-1].split()[0] == "Z"
            except OSError:
                pass


def test_large_allocation_fails():
    r = run_python("x = bytearray(4 << 30)\nprint('allocated')", "", FAST)
    assert r.status == "memory" and "allocated" not in r.stdout


def test_network_blocked():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    hits = []
    threading.Thread(target=lambda: hits.append(srv.accept()), daemon=True).start()
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "print('CONNECTED')\n")
    r = run_python(code, "", FAST)
    time.sleep(0.2)
    srv.close()
    assert r.status == "error" and "CONNECTED" not in r.stdout and not hits


def test_writing_outside_its_dir_is_contained(tmp_path):
    target = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)
    code = (f"open({str(target)!r}, 'w').write('x')\nprint('WROTE')\n")
    r = run_python(code, "", FAST)
    if isolation_level()["filesystem"].startswith("cwd only"):
        pytest.skip("no root and no mount namespace: writes outside the sandbox dir are not blocked here")
    assert r.status == "error" and not target.exists()
    r2 = run_python("open('/tmp/pwned_by_sandbox', 'w').write('x')", "", FAST)
    assert r2.status == "error" and not os.path.exists("/tmp/pwned_by_sandbox")
    r3 = run_python("open('own.txt', 'w').write('ok')\nprint(open('own.txt').read())", "", FAST)
    assert r3.status == "ok" and r3.stdout.strip() == "ok"  # its own dir stays writable


def test_huge_output_capped():
    r = run_python("while True:\n    print('A' * 10000)\n", "", FAST)
    assert r.status == "output_limit" and r.truncated and len(r.stdout) <= FAST.max_output_bytes


def test_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-should-not-leak")
    r = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))", "", FAST)
    assert r.status == "ok" and "sk-secret" not in r.stdout and "OPENAI_API_KEY" not in r.stdout


def test_code_verification_end_to_end():
    answer = "Here:\n```python\nprint('draft')\n```\nFixed:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert extract_code(answer).strip().endswith("print(a + b)")
    tests = {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12"]}
    assert check(tests, answer, FAST)[0] == "correct"
    wrong = answer.replace("a + b", "a * b")
    verdict, info = check(tests, wrong, FAST)
    assert verdict == "wrong" and info["details"][-1] == "wrong_output"
    assert check(tests, "no code here", FAST)[0] == "no_answer"
    assert check(None, answer, FAST)[0] == "unverifiable"
    hang = "```python\nwhile True: pass\n```"
    assert check(tests, hang, FAST)[1]["status"] == "timeout"
    asserts = ["assert f(2) == 4", "assert f(3) == 9"]
    assert check(asserts, "```python\ndef f(x):\n    return x * x\n```", FAST)[0] == "correct"
    assert check(asserts, "```python\ndef f(x):\n    return x + 2\n```", FAST)[0] == "wrong"
    assert normalize_tests('[{"input": "1", "output": "2"}]') == [{"input": "1", "output": "2"}]
    assert run_tests("print(1)", [{"input": "", "output": "1"}] * 3, FAST)["passed"] == 3
