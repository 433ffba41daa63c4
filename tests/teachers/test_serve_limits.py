"""The project's teacher server (``distill_plugin.serve``) against a hostile client: the API key is
compared in constant time, and request bodies over ``--max-body-bytes`` get a 413 before they are
held whole (declared or streamed), while the server keeps answering."""

from __future__ import annotations

import httpx
import pytest

from served_teacher import serve

KEY_ENV, KEY = "DISTILL_TEST_LIMITS_KEY", "sk-limits-77c2"
LIMIT = 4096


@pytest.fixture(scope="module")
def server(tiny_pair):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        with serve(tiny_pair[0], "--served-model-name", "tiny", "--api-key-env", KEY_ENV,
                   "--max-body-bytes", str(LIMIT)) as url:
            yield url


def score(url, prompt, key=KEY, **kwargs):
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 1, "prompt_logprobs": 2}
    return httpx.post(url + "/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs)


def test_bodies_over_the_limit_are_refused_and_the_server_goes_on(server):
    small = score(server, list(range(1, 30)))
    assert small.status_code == 200 and len(small.json()["choices"][0]["prompt_logprobs"]) == 29
    declared = score(server, list(range(1, 300)) * 10)  # ~12 kB with its Content-Length
    assert declared.status_code == 413 and f"limit of {LIMIT} bytes (--max-body-bytes)" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: the size is only known as the body streams
        yield b'{"model": "tiny", "prompt": ['
        for _ in range(2000):
            yield b"1, 2, 3, 4, "
        yield b"5]}"

    streamed = httpx.post(server + "/completions", content=chunks(), timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert score(server, list(range(1, 30))).json() == small.json()  # still serving, same answer


def test_the_key_is_checked_in_constant_time(server, tiny_pair, monkeypatch):
    assert score(server, [1, 2, 3], key="sk-limits-77c3").status_code == 401  # same length, last character off
    assert score(server, [1, 2, 3], key="x").status_code == 401  # shorter
    assert httpx.get(server + "/models", timeout=10).status_code == 401  # no header at all
    assert score(server, [1, 2, 3]).status_code == 200

    import distill_plugin.serve as serve_module

    compared = []
    real = serve_module.hmac.compare_digest
    monkeypatch.setattr(serve_module.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert serve_module.key_matches(f"Bearer {KEY}", KEY) and not serve_module.key_matches("Bearer x", KEY)
    assert not serve_module.key_matches(None, KEY)
    assert compared == [(f"Bearer {KEY}".encode(), f"Bearer {KEY}".encode()), (b"Bearer x", f"Bearer {KEY}".encode()),
                        (b"", f"Bearer {KEY}".encode())]
