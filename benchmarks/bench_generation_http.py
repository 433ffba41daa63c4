"""Generation over HTTP against a server with long-tail latency: does ``distill-data generate`` keep
``concurrency`` requests in flight?

    python benchmarks/bench_generation_http.py [--prompts 400] [--concurrency 16] [--mean 0.2] [--sigma 1.0]

The server is the project's OpenAI-compatible test server (``tests/data_prep/openai_server.py``) in
``--synthetic-latency`` mode: no model, each request sleeps a log-normal latency (mean ``--mean``
seconds, sigma ``--sigma``: a long tail; seeded by the request number, so every run sees the same
latencies) and answers a fixed text. The ideal throughput is ``concurrency / mean latency``.

Two schedules of the same client (``OpenAIHTTPBackend``, one request per prompt, n = 1):
* ``continuous``: what ``data_prep.generate`` does now: one ``generate`` call over a lazy iterator
  of all prompts, ``concurrency`` workers each taking the next prompt when free (the rows are
  written as they finish; ``--through-generate`` times the whole ``data_prep.generate`` stage,
  prompt loading and report included).
* ``per-chunk``: the former schedule, one ``generate`` call (one event loop) per chunk of
  ``--chunk-size`` prompts, each waiting for its slowest request.

Both client and server are Python on the same machine: at a high request rate their CPU time, not
the schedule, limits throughput (keep ``concurrency / mean`` to a few tens per second on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "data_prep")]

import httpx  # noqa: E402

from data_prep.generate import GenerateConfig, generate  # noqa: E402
from distill_plugin.generation import SamplingParams  # noqa: E402
from distill_plugin.generation.openai_http import OpenAIHTTPBackend  # noqa: E402
from distill_plugin.jsonl import write_jsonl_atomic  # noqa: E402
from dp_helpers import openai_server  # noqa: E402

SAMPLING = SamplingParams(n=1, max_tokens=8)


def through_generate(url: str, prompts: Path, out: Path, concurrency: int, chunk_size: int) -> int:
    cfg = GenerateConfig(backend="openai", model="m", sampling=SAMPLING, chunk_size=chunk_size,
                         backend_options={"base_url": url + "/v1", "concurrency": concurrency})
    return generate([prompts], out, cfg).rows_out


def run_backend(url: str, n: int, concurrency: int, chunk_size: int | None) -> int:
    """``chunk_size`` None: one call over all prompts (continuous); else one call per chunk."""
    backend = OpenAIHTTPBackend("m", base_url=url + "/v1", concurrency=concurrency)
    messages = ([{"role": "user", "content": f"q{i}"}] for i in range(n))
    got = []
    if chunk_size is None:
        backend.generate(messages, SAMPLING, lambda i, c: got.append(i))
    while chunk_size and (chunk := list(itertools.islice(messages, chunk_size))):
        backend.generate(chunk, SAMPLING, lambda i, c: got.append(i))
    return len(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--mean", type=float, default=0.5, help="mean request latency, seconds")
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma (1.0: p99 ~ 6x the mean)")
    ap.add_argument("--through-generate", action="store_true", help="also time the whole data_prep.generate stage")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gen_"))
    prompts = tmp / "prompts.jsonl"
    write_jsonl_atomic(prompts, ({"id": f"q{i}", "problem": f"q{i}"} for i in range(a.prompts)))
    ideal = a.concurrency / a.mean
    print(f"{a.prompts} prompts, concurrency {a.concurrency}, latency log-normal mean {a.mean}s sigma {a.sigma}; "
          f"ideal {ideal:.1f} prompts/s")
    print("| schedule | prompts | seconds | prompts/s | / ideal | measured mean latency s | p99 latency s |")
    print("|---|---|---|---|---|---|---|")
    schedules = ["continuous", "per-chunk"] + (["data_prep.generate"] if a.through_generate else [])
    for name in schedules:
        server_args = ["--synthetic-latency", str(a.mean), "--latency-sigma", str(a.sigma)]
        with openai_server("-", *server_args) as url:  # a fresh server: the same latency sequence
            t0 = time.perf_counter()
            if name == "data_prep.generate":
                done = through_generate(url, prompts, tmp / "gen", a.concurrency, a.chunk_size)
            else:
                done = run_backend(url, a.prompts, a.concurrency, None if name == "continuous" else a.chunk_size)
            seconds = time.perf_counter() - t0
            lat = sorted(httpx.get(url + "/stats").json()["latencies"])
        mean = statistics.fmean(lat)
        rate = done / seconds
        print(f"| {name} | {done} | {seconds:.1f} | {rate:.1f} | {rate / (a.concurrency / mean):.2f} | "
              f"{mean:.3f} | {lat[int(0.99 * (len(lat) - 1))]:.2f} |")
    print("/ ideal uses the measured mean latency: concurrency / mean.")


if __name__ == "__main__":
    main()
