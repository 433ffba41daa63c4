"""The OpenAI-compatible HTTP backend against a real server on 127.0.0.1 serving the tiny teacher.

The server (tests/data_prep/openai_server.py) answers the first request with 503 and stalls the
second beyond the client's timeout, so the run only completes if retries with backoff and the
request timeout work. It requires an API key, given to the client only through the environment.
"""

import logging

import httpx
import pytest

from dp_helpers import free_port, openai_server, read_jsonl, subprocess_env
from distill_plugin.generation import GenerationError, SamplingParams
from distill_plugin.generation.openai_http import OpenAIHTTPBackend
from data_prep.generate import GenerateConfig, generate

SECRET = "sk-test-" + "9f3c1e7a5b"


@pytest.fixture(scope="module")
def server(tiny_teacher):
    env = subprocess_env() | {"TEST_SERVER_KEY": SECRET}
    with openai_server(tiny_teacher, "--fail-first", "1", "--slow-request", "2", "--slow-seconds", "4",
                       "--split-reasoning", "--api-key-env", "TEST_SERVER_KEY", env=env) as url:
        yield url


def test_generate_over_http_with_retries_timeouts_and_reasoning_split(tmp_path, server, prompts_file,
                                                                      monkeypatch, caplog):
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    cfg = GenerateConfig(backend="openai", model="tiny", limit=3,
                         sampling=SamplingParams(n=2, max_tokens=40, seed=0),
                         backend_options={"base_url": server + "/v1", "api_key_env": "MY_TEACHER_KEY",
                                          "concurrency": 2, "timeout_s": 1.5, "max_retries": 4,
                                          "backoff_s": 0.05})
    with caplog.at_level(logging.DEBUG):
        rep = generate(prompts_file, tmp_path / "gen", cfg)
    rows = read_jsonl(tmp_path / "gen" / "generations.jsonl")
    assert rep.rows_out == 3 and all(len(r["generations"]) == 2 for r in rows)
    stats = httpx.get(server + "/stats").json()
    # 6 generations (n_per_request=1) + one 503 + one request that timed out client-side
    assert stats["requests"] >= 8 and stats["auth_failures"] == 0
    assert any("HTTP 503" in r.getMessage() for r in caplog.records)
    assert any("Timeout" in r.getMessage() for r in caplog.records)
    by_prompt = {r["prompt"]: r for r in rows}  # rows are written in completion order
    g = by_prompt["What is 2+3?"]["generations"][0]
    # the server split the reasoning into reasoning_content; we rebuilt <think>…</think>
    assert g["reasoning"] == "2+3=5" and g["content"] == "\\boxed{5}" and g["think_closed"]
    assert g["text"].startswith("<think>\n2+3=5\n</think>")
    assert g["finish_reason"] == "stop" and g["completion_tokens"] > 10
    # the key never appears in logs or outputs
    assert SECRET not in caplog.text and SECRET not in (tmp_path / "gen" / "generations.jsonl").read_text()
    assert SECRET not in repr(OpenAIHTTPBackend("m", api_key_env="MY_TEACHER_KEY"))


def test_wrong_key_fails_fast_without_leaking(server, monkeypatch):
    monkeypatch.setenv("BAD_KEY", "sk-wrong")
    be = OpenAIHTTPBackend("tiny", base_url=server + "/v1",
                           api_key_env="BAD_KEY", max_retries=3, backoff_s=0.01)
    with pytest.raises(GenerationError, match="HTTP 401") as e:
        be.generate([[{"role": "user", "content": "hi"}]], SamplingParams(n=1, max_tokens=4), lambda i, g: None)
    assert "sk-wrong" not in str(e.value)


def test_unreachable_server_gives_up_after_bounded_retries():
    be = OpenAIHTTPBackend("m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2, backoff_s=0.01)
    with pytest.raises(GenerationError, match="giving up after 3 attempts"):
        be.generate([[{"role": "user", "content": "hi"}]], SamplingParams(n=1, max_tokens=4), lambda i, g: None)
