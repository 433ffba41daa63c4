"""Any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang, TGI, ``transformers serve``).

Bounded concurrency (an ``asyncio.Semaphore``), a timeout per request, retries with exponential
backoff and jitter on timeouts, connection errors, 408/409/429/5xx (``Retry-After`` honoured). The
API key is read from an environment variable and only ever sent in the ``Authorization`` header;
it is never logged or stored in outputs.

The server applies the teacher's own chat template. ``prefill_think`` sends a final assistant
message ``"<think>\\n"`` with ``continue_final_message=true, add_generation_prompt=false`` (the
vLLM/SGLang extension). A server that splits reasoning into ``reasoning_content`` (or
``reasoning``) is handled: the stored text is rebuilt as ``<think>…</think>`` + answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Sequence

import httpx

from .base import THINK_PREFILL, Backend, Generation, OnDone, PromptStyle, Sampling

log = logging.getLogger("data_prep.http")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class HTTPBackendError(RuntimeError):
    """A request failed permanently (non-retryable status, or retries exhausted)."""


class OpenAIHTTPBackend(Backend):
    name = "openai"

    def __init__(self, model: str, sampling: Sampling, style: PromptStyle,
                 base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, timeout_s: float = 600.0, max_retries: int = 5,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0, n_per_request: int = 1,
                 extra_body: dict | None = None):
        self.model_name, self.sampling, self.style = model, sampling, style
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.n_per_request = max(1, min(n_per_request, sampling.n))
        self.extra_body = extra_body or {}
        self.stats = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIHTTPBackend(url={self.url!r}, model={self.model_name!r}, api_key=<redacted>)"

    def _body(self, messages: list[dict], n: int) -> dict:
        s = self.sampling
        body = {"model": self.model_name, "messages": messages, "n": n, "temperature": s.temperature,
                "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.seed is not None:
            body["seed"] = s.seed
        if self.style.prefill_think:
            body["messages"] = messages + [{"role": "assistant", "content": THINK_PREFILL}]
            body.update(continue_final_message=True, add_generation_prompt=False)
        body.update(self.extra_body)
        return body

    def run(self, batch: Sequence[list[dict]], on_done: OnDone) -> None:
        asyncio.run(self._run_all(list(batch), on_done))

    async def _run_all(self, batch: list[list[dict]], on_done: OnDone) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(headers=headers, limits=limits,
                                     timeout=httpx.Timeout(self.timeout_s)) as client:
            async def one_prompt(i: int, messages: list[dict]):
                sizes = [self.n_per_request] * (self.sampling.n // self.n_per_request)
                if self.sampling.n % self.n_per_request:
                    sizes.append(self.sampling.n % self.n_per_request)
                parts = await asyncio.gather(*(self._request(client, sem, messages, k) for k in sizes))
                on_done(i, [g for part in parts for g in part])

            tasks = [asyncio.create_task(one_prompt(i, m)) for i, m in enumerate(batch)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()

    async def _request(self, client: httpx.AsyncClient, sem: asyncio.Semaphore,
                       messages: list[dict], n: int) -> list[Generation]:
        body = self._body(messages, n)
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                async with sem:
                    self.stats["requests"] += 1
                    resp = await client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                why = f"{type(e).__name__}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp.json(), n)
                if resp.status_code not in RETRY_STATUS:
                    raise HTTPBackendError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:300]}")
                why = f"HTTP {resp.status_code}"
                ra = resp.headers.get("retry-after")
                if ra and ra.replace(".", "", 1).isdigit():
                    delay = min(self.backoff_max_s, float(ra))
            if attempt == self.max_retries:
                raise HTTPBackendError(f"{self.url}: giving up after {attempt + 1} attempts ({why})")
            self.stats["retries"] += 1
            log.warning("%s: %s, retry %d/%d in %.1fs", self.url, why, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _parse(self, data: dict, n: int) -> list[Generation]:
        usage = data.get("usage") or {}
        choices = data.get("choices") or []
        if len(choices) != n:
            raise HTTPBackendError(f"{self.url}: asked for n={n}, got {len(choices)} choices")
        gens = []
        for ch in choices:
            msg = ch.get("message") or {}
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            gens.append(Generation.from_text(
                msg.get("content") or "", ch.get("finish_reason"), usage.get("prompt_tokens"),
                usage.get("completion_tokens") if n == 1 else None,  # usage is summed over choices
                prefilled=self.style.prefill_think, reasoning_content=reasoning))
        return gens

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "url": self.url,
                "api_key_env": self.api_key_env, **self.sampling.model_dump()}
