"""A process pool with a hard per-item timeout: a stuck worker is SIGKILLed and replaced.

``concurrent.futures``/``multiprocessing.Pool`` cannot cancel a running item; math-verify's own
timeouts use ``signal.alarm``, which only works on the main thread. Here each worker owns a pipe;
the parent hands out one item at a time, waits on all pipes with the earliest deadline as timeout,
and kills a worker whose item overruns. Workers come from a ``forkserver`` with ``preload``ed
modules, so a replacement starts in milliseconds and no threads of the parent are forked.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

TIMEOUT = object()  # result marker: the item exceeded its time
_ERROR = "__pool_error__"


def _worker(fn: Callable, conn) -> None:  # pragma: no cover - runs in the child
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            conn.send(fn(item))
        except Exception as e:  # report, keep serving
            conn.send((_ERROR, f"{type(e).__name__}: {e}"))


class HardTimeoutPool:
    """``imap``-like ordered map of a picklable module-level ``fn`` with a per-item deadline."""

    def __init__(self, fn: Callable, workers: int = 2, timeout_s: float = 5.0,
                 preload: Iterable[str] = ()):
        self.fn, self.n, self.timeout_s = fn, max(1, workers), timeout_s
        self.ctx = mp.get_context("forkserver")
        try:
            self.ctx.set_forkserver_preload(list(preload) + [fn.__module__])
        except Exception:  # pragma: no cover
            pass
        self.workers: list[tuple] = []
        self.timeouts = 0
        self.deaths_in_a_row = 0
        for _ in range(self.n):
            self.workers.append(self._spawn())

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(self.fn, child), daemon=True)
        p.start()
        child.close()
        return p, parent

    def _replace(self, idx: int) -> None:
        p, conn = self.workers[idx]
        p.kill()
        p.join(timeout=5)
        conn.close()
        self.workers[idx] = self._spawn()

    def map(self, items: Iterable) -> Iterator:
        """Yield ``fn(item)`` in input order; ``TIMEOUT`` for overruns; raises on worker errors."""
        pending = iter(enumerate(items))
        results: dict[int, object] = {}
        busy: dict[int, tuple[int, float]] = {}  # worker idx -> (item idx, deadline)
        next_out, exhausted = 0, False
        while True:
            for w in range(self.n):  # feed idle workers
                if w not in busy and not exhausted:
                    nxt = next(pending, None)
                    if nxt is None:
                        exhausted = True
                        break
                    self.workers[w][1].send(nxt[1])
                    busy[w] = (nxt[0], time.monotonic() + self.timeout_s)
            while next_out in results:
                r = results.pop(next_out)
                next_out += 1
                if isinstance(r, tuple) and len(r) == 2 and r[0] == _ERROR:
                    raise RuntimeError(f"worker error: {r[1]}")
                yield r
            if not busy:
                if exhausted:
                    return
                continue
            conns = {self.workers[w][1]: w for w in busy}
            timeout = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            for conn in wait(list(conns), timeout=timeout):
                w = conns[conn]
                try:
                    results[busy[w][0]] = conn.recv()
                    self.deaths_in_a_row = 0
                except (EOFError, OSError):  # the worker died (e.g. OOM-killed): count as a timeout
                    results[busy[w][0]] = TIMEOUT
                    self.deaths_in_a_row += 1
                    if self.deaths_in_a_row > 2 * self.n:
                        raise RuntimeError("pool workers keep dying at start (see their traceback "
                                           "above; scripts run from stdin cannot use a forkserver)")
                    self._replace(w)
                del busy[w]
            now = time.monotonic()
            for w, (i, deadline) in list(busy.items()):
                if now >= deadline:
                    results[i] = TIMEOUT
                    del busy[w]
                    self.timeouts += 1
                    self._replace(w)

    def close(self) -> None:
        for p, conn in self.workers:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p, conn in self.workers:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
            conn.close()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
