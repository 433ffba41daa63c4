"""The project's teacher server (``distill_plugin.serve``) on 127.0.0.1 in a subprocess, with faults.

``serve(model_dir, **options)`` starts ``python served_teacher.py MODEL_DIR --port P ...`` on a free
port, waits for it and yields the base URL; the process is stopped on exit. Fault injection wraps
the real app (nothing is mocked) and is set at run time, so one server serves many tests
(starting one costs a minute on a loaded CPU): ``set_faults(url, fail=[2, 3], stall=[4],
stall_seconds=S, no_prompt_logprobs=True)`` restarts the ``/completions`` request count; requests
(1-based) in ``fail`` get a 503, those in ``stall`` are held S seconds first, and with
``no_prompt_logprobs`` the vLLM extension is refused with a 400 like a strict OpenAI server (the
client must fall back to ``echo``); those in ``garble`` get a 200 whose body is cut short (not
JSON), those in ``cut`` the real answer with half its prompt log-prob entries (malformed answers);
``delay_s`` holds every request that long (a remote server's latency, for the benchmark).
``faults(url)`` returns the plan and the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, port: int, timeout: float) -> None:
    """Until the server on ``port`` answers (its output in the error when it exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = proc.stdout.read()[-3000:] if proc.stdout else ""
            raise RuntimeError(f"teacher server exited ({proc.returncode}):\n{output}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/faults", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"teacher server on port {port} not up after {timeout}s")
        time.sleep(0.2)


@contextlib.contextmanager
def serve(model_dir, *args: str, env: dict | None = None, timeout: float = 300.0):
    """Yield the base URL (``http://127.0.0.1:P/v1``) of the served ``model_dir``; ``args`` go to the CLI."""
    import os

    port = free_port()
    cmd = [sys.executable, str(HERE), str(model_dir), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, port, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Restartable:
    """The served ``model_dir`` on one fixed 127.0.0.1 port that a test kills (SIGKILL, as a crash or a
    node drain does) and starts again: ``start(wait=False)`` returns at once, the server comes up later."""

    def __init__(self, model_dir, *args: str, env: dict | None = None):
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, str(HERE), str(model_dir), "--port", str(self.port), *args]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 300.0) -> "Restartable":
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            wait_until_up(self.proc, self.port, timeout)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/faults", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def teacher_with_other_tokenizer(teacher_dir, out_dir) -> Path:
    """A copy of ``teacher_dir`` whose tokenizer orders the same bytes in reverse: same size, other ids."""
    import shutil

    from transformers import Qwen2Tokenizer

    from distill_plugin.testing.tiny import BOS_EOS, PAD, SPECIAL_TOKENS, byte_alphabet

    shutil.copytree(teacher_dir, out_dir)
    vocab = {ch: i for i, ch in enumerate(reversed(byte_alphabet()))}
    vocab.update({t: len(vocab) + j for j, t in enumerate(SPECIAL_TOKENS)})
    Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=PAD, pad_token=PAD, eos_token=BOS_EOS,
                   additional_special_tokens=SPECIAL_TOKENS[1:]).save_pretrained(out_dir)
    return Path(out_dir)


def faults(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/faults", timeout=5).json()


def set_faults(url: str, **plan) -> None:
    httpx.post(url.removesuffix("/v1") + "/faults", json=plan, timeout=5).raise_for_status()


def with_faults(app):
    import json

    from fastapi.responses import JSONResponse, Response

    state: dict = {}

    def reset(fail=(), stall=(), stall_seconds=0.0, no_prompt_logprobs=False, delay_s=0.0, garble=(), cut=()):
        state.clear()
        state.update(fail=list(fail), stall=list(stall), stall_seconds=stall_seconds, delay_s=delay_s,
                     no_prompt_logprobs=no_prompt_logprobs, garble=list(garble), cut=list(cut), completions=0,
                     failed=0, stalled=0, refused_prompt_logprobs=0, garbled=0, was_cut=0)

    reset()

    @app.middleware("http")
    async def inject(request, call_next):
        if request.url.path.endswith("/completions"):
            state["completions"] += 1
            n = state["completions"]
            if n in state["fail"]:
                state["failed"] += 1
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if n in state["garble"]:  # a 200 whose body is cut short: not JSON
                state["garbled"] += 1
                return Response(b'{"choices": [{"prompt_logprobs": [null, {"12": {"logp', media_type="application/json")
            if n in state["cut"]:  # valid JSON, but half the positions asked for
                state["was_cut"] += 1
                response = await call_next(request)
                body = json.loads(b"".join([chunk async for chunk in response.body_iterator]))
                choice = body["choices"][0]
                for holder, key in ((choice, "prompt_logprobs"), (choice.get("logprobs") or {}, "top_logprobs")):
                    if holder.get(key):
                        holder[key] = holder[key][: len(holder[key]) // 2]
                return JSONResponse(body)
            if n in state["stall"]:
                state["stalled"] += 1
                await asyncio.sleep(state["stall_seconds"])
            await asyncio.sleep(state["delay_s"])
            if state["no_prompt_logprobs"] and "prompt_logprobs" in await request.json():
                state["refused_prompt_logprobs"] += 1
                return JSONResponse({"error": {"message": "Unrecognized request argument: prompt_logprobs"}},
                                    status_code=400)
        return await call_next(request)

    @app.get("/faults")
    def counters():
        return state

    @app.post("/faults")
    def plan(body: dict):
        reset(**body)
        return state

    return app


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    from distill_plugin.serve import main

    main(app_wrapper=with_faults)
