"""Run many ``python -m axolotl.cli.train RECIPE`` from one process that imported Axolotl once.

A new ``axolotl.cli.train`` process spends ~20 s importing (torch, transformers, peft, trl, sklearn,
scipy) and ~4 s tearing down, against ~25 s of training for a benchmark student (measured on this
repository's 2-core CI machine: 54 s as a new process, 26 s forked from here, the same saved weights
byte for byte). The benchmark and the demo train tens of students, so they start one server

    python -m distill_plugin.demo.prefork        # environment and cwd: the students'

that imports what ``axolotl.cli.train`` imports (:data:`PRELOAD`, before any config is read: no
Axolotl patch or plugin state exists yet) and then, for each request on its stdin, forks a child that
runs ``axolotl.cli.train`` as ``__main__`` (``runpy``, exactly as ``python -m`` does) with its output
in the request's log. Each child starts from the server's untouched state, so students never see
each other's patches. The server never runs torch itself: forking after torch ran would copy its
thread pools. Protocol (JSON lines): the server writes ``{"ready": true}`` once imported; a request
``{"name", "argv", "log", "cwd"}`` is answered ``{"started": name, "pid": pid}``, and its end later
``{"ended": name, "code": exit status}`` (negative: killed by that signal). At end of input the
server stops the children still running, reaps them and exits.

:class:`Prefork` is the client: ``start(name, argv, log, cwd)`` returns a :class:`Child` with
``poll()`` and ``terminate()`` like ``subprocess.Popen``'s.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# What ``axolotl.cli.train`` imports on its way to training, in that order (``do_cli`` → ``load_cfg`` →
# ``do_train``). A name missing in an Axolotl version is skipped: preloading only saves time.
# ``axolotl.cli.train`` itself is not preloaded: runpy executes it afresh as ``__main__``.
PRELOAD = ("transformers.hf_argparser", "axolotl.cli.config", "axolotl.utils.config", "axolotl.cli.checks",
           "axolotl.common.datasets", "axolotl.train", "axolotl.utils.trainer", "axolotl.core.builders",
           "accelerate", "distill_plugin", "distill_plugin.plugin", "distill_plugin.trainer")


def preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    sys.modules.pop("axolotl.cli.train", None)  # an import above may pull it in; runpy wants it fresh


def run_child(argv: list[str], log: str, cwd: str) -> None:
    """In the forked child: output to ``log``, run ``argv`` (``[module, args...]``) as ``python -m``
    would, exit with its status. Never returns."""
    import runpy

    code = 1
    try:
        os.chdir(cwd)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = list(argv)
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # the traceback python prints for an uncaught error
    finally:
        # Like multiprocessing's children: no interpreter teardown (seconds of module finalisers), and
        # the server's atexit handlers are not the child's; flush what the run wrote first.
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(imports: bool = True) -> None:
    """The server loop (module docstring); ``imports=False`` (``--no-preload``, tests): none."""
    import warnings

    # One native thread exists after the imports (pyarrow's jemalloc background thread), which makes
    # Python warn on every fork; jemalloc re-initialises it in the child (pthread_atfork).
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    # Replies go on a private copy of stdout; fd 1 becomes the log (stderr), so whatever an import or
    # the server prints can never be read as a reply.
    out = os.fdopen(os.dup(1), "w")
    os.set_inheritable(out.fileno(), False)
    os.dup2(2, 1)
    if imports:
        preload()
    reply = lambda message: (out.write(json.dumps(message) + "\n"), out.flush())  # noqa: E731
    reply({"ready": True})
    children: dict[int, str] = {}

    def reap(block: bool) -> None:
        while children:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            if pid == 0:
                return
            reply({"ended": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})

    stdin = os.fdopen(0, "rb", buffering=0)  # unbuffered: a line read never hides the next one from select
    while True:
        if select.select([stdin], [], [], 0.2)[0]:
            line = stdin.readline()
            if not line:
                break
            request = json.loads(line)
            sys.stdout.flush()  # nothing of the server's own output left in a buffer the child would inherit
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                out.close()  # the client sees the server's end, not its children's
                run_child(request["argv"], request["log"], request["cwd"])
            children[pid] = request["name"]
            reply({"started": request["name"], "pid": pid})
        reap(block=False)
    for pid in list(children):  # input closed: the client is gone or gave up on these
        os.kill(pid, signal.SIGTERM)
    reap(block=True)


class Child:
    """One forked run, as the client sees it (``Popen``-like)."""

    def __init__(self, server: Prefork, name: str, pid: int):
        self.server, self.name, self.pid = server, name, pid

    def poll(self) -> int | None:
        return self.server.poll(self.name)

    def terminate(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class Prefork:
    """Client of the server above, a context manager: ``with Prefork(env, cwd, log) as server:``.
    ``log`` takes the server's own output (its imports' warnings)."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, imports: bool = True):
        self.env, self.cwd, self.log, self.imports = env, cwd, log, imports
        self.codes: dict[str, int] = {}
        self.gone = False
        self.messages: queue.Queue = queue.Queue()

    def __enter__(self) -> Prefork:
        with self.log.open("w") as handle:
            self.proc = subprocess.Popen([sys.executable, "-m", __name__, *([] if self.imports else ["--no-preload"])],
                                         cwd=self.cwd, env=self.env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=handle)
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready")
        return self

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.messages.put(json.loads(line))
        finally:
            self.messages.put(None)  # the server exited (or wrote nonsense: treated the same)

    def _expect(self, key: str) -> dict:
        """The next message with ``key``, recording the ends seen before it."""
        while True:
            message = self.messages.get()
            if message is None:
                self._gone()
            if "ended" in message:
                self.codes[message["ended"]] = message["code"]
            if key in message:
                return message

    def start(self, name: str, argv: list[str], log: Path, cwd: Path) -> Child:
        self.proc.stdin.write(json.dumps({"name": name, "argv": argv, "log": str(log), "cwd": str(cwd)}) + "\n")
        self.proc.stdin.flush()
        return Child(self, name, self._expect("started")["pid"])

    def poll(self, name: str) -> int | None:
        while not self.gone and not self.messages.empty():
            message = self.messages.get()
            if message is None:
                self.gone = True
            elif "ended" in message:
                self.codes[message["ended"]] = message["code"]
        if self.gone and name not in self.codes:
            self._gone()
        return self.codes.get(name)

    def _gone(self) -> None:
        self.gone = True
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the axolotl.cli.train fork server exited ({self.proc.wait()}); log {self.log}:\n{tail}")

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()  # the server stops the children still running, then exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve(imports="--no-preload" not in sys.argv[1:])
