"""Any OpenAI-compatible server (vLLM, SGLang, TGI, ``transformers serve``) over HTTP.

Chat prompts go to ``/chat/completions`` (the server applies the model's chat template; a final
assistant message is sent with ``continue_final_message=true, add_generation_prompt=false``, the
vLLM/SGLang extension for prefills); token-id prompts go to ``/completions`` with ``prompt`` = the
ids (vLLM and SGLang accept them). A server that splits reasoning off (``reasoning_content`` or
``reasoning``) has it returned in ``Completion.reasoning``.

Scheduling: one event loop, ``concurrency`` workers taking prompts from the (lazy) prompt
iterator, so ``concurrency`` requests stay in flight until the prompts run out and a slow request
holds up only its own prompt; ``on_done`` is called as each prompt finishes. A prompt whose ``n``
samples are split over several requests (``n_per_request``) shares the same request bound.

Failures: timeouts, connection errors and 408/409/429/5xx are retried with exponential backoff and
jitter (``Retry-After`` honoured). A prompt that fails for good (another status, retries
exhausted, a response that does not parse) raises :class:`GenerationError` naming the URL, the
status and the server's message, or — given ``on_error`` — is reported there and the run goes on.
The API key is read from an environment variable and only sent in the ``Authorization`` header;
it is never logged or stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from collections.abc import Iterable

import httpx

from .base import (Backend, Completion, GenerationError, ServerUnreachable, OnDone, OnError, Prompt, SamplingParams, is_token_ids,
                   split_prefill)

log = logging.getLogger("distill_plugin.generation")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIHTTPBackend(Backend):
    name = "openai"

    def __init__(self, model: str, *, base_url: str = "http://127.0.0.1:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16, timeout_s: float = 600.0,
                 max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 n_per_request: int = 1, extra_body: dict | None = None):
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.n_per_request = n_per_request  # 1: per-sample token usage is known
        self.extra_body = extra_body or {}
        self.stats = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIHTTPBackend(url={self.base_url!r}, model={self.model_name!r}, api_key=<redacted>)"

    def request(self, prompt: Prompt, s: SamplingParams, n: int) -> tuple[str, dict]:
        """The endpoint and JSON body of one request for ``n`` samples of ``prompt``."""
        body = {"model": self.model_name, "n": n, "temperature": s.temperature, "top_p": s.top_p,
                "max_tokens": s.max_tokens}
        if s.seed is not None:
            body["seed"] = s.seed
        if is_token_ids(prompt):
            url = self.base_url + "/completions"
            body["prompt"] = list(prompt)
            if s.logprobs:
                body["logprobs"] = 0
        else:
            url = self.base_url + "/chat/completions"
            body["messages"] = list(prompt)
            if split_prefill(list(prompt))[1] is not None:
                body.update(continue_final_message=True, add_generation_prompt=False)
            if s.logprobs:
                body["logprobs"] = True
        body.update(self.extra_body)
        return url, body

    def generate(self, prompts: Iterable[Prompt], sampling: SamplingParams, on_done: OnDone,
                 on_error: OnError | None = None) -> None:
        asyncio.run(self._generate(prompts, sampling, on_done, on_error))

    async def _generate(self, prompts: Iterable[Prompt], s: SamplingParams, on_done: OnDone,
                        on_error: OnError | None) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        per_request = max(1, min(self.n_per_request, s.n))
        sizes = [per_request] * (s.n // per_request) + ([s.n % per_request] if s.n % per_request else [])
        queue = enumerate(prompts)  # shared by the workers: each takes the next prompt when free
        async with self.client() as client:
            async def worker():
                for i, prompt in queue:
                    try:
                        parts = await asyncio.gather(*(self._post(client, sem, prompt, s, n) for n in sizes))
                    except GenerationError as e:
                        if on_error is None or isinstance(e, ServerUnreachable):
                            raise
                        on_error(i, e)
                        continue
                    on_done(i, list(itertools.chain.from_iterable(parts)))

            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()

    def client(self) -> httpx.AsyncClient:
        """An async client with the key's header, ``concurrency`` connections and the timeout."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(self.timeout_s))

    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, prompt: Prompt,
                    s: SamplingParams, n: int) -> list[Completion]:
        url, body = self.request(prompt, s, n)
        return self.parse(url, await self.send(client, sem, url, body), n)

    async def send(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str, body: dict | None) -> httpx.Response:
        """POST ``body`` (GET when None) to ``url`` under ``sem``, retrying timeouts, connection errors
        and ``RETRY_STATUS`` with backoff; the 200 response, else a ``GenerationError`` naming the URL."""
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                async with sem:
                    self.stats["requests"] += 1
                    resp = await (client.get(url) if body is None else client.post(url, json=body))
            except (httpx.TimeoutException, httpx.TransportError) as e:
                why = status = type(e).__name__
            else:
                if resp.status_code == 200:
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    raise GenerationError(f"{url}: HTTP {resp.status_code}: {server_message(resp)}", resp.status_code)
                why, status = f"HTTP {resp.status_code}: {server_message(resp)}", resp.status_code
                retry_after = resp.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(self.backoff_max_s, float(retry_after))
            if attempt == self.max_retries:
                error = ServerUnreachable if status == "ConnectError" else GenerationError
                raise error(f"{url}: giving up after {attempt + 1} attempts ({why})", status)
            self.stats["retries"] += 1
            log.warning("%s: %s, retry %d/%d in %.1fs", url, why, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def parse(self, url: str, resp: httpx.Response, n: int) -> list[Completion]:
        """Completions of a 200 response; a body that is not the OpenAI schema is a GenerationError."""
        try:
            data = resp.json()
            usage = data.get("usage") or {}
            choices = data["choices"]
            if len(choices) != n:
                raise ValueError(f"asked for n={n}, got {len(choices)} choices")
            return [self.completion(ch, usage, n) for ch in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GenerationError(f"{url}: unparsable response ({type(e).__name__}: {e}): {resp.text[:200]}",
                                  "unparsable") from None

    @staticmethod
    def completion(choice: dict, usage: dict, n: int) -> Completion:
        if "message" in choice:  # /chat/completions
            msg = choice["message"]
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            logprobs = (choice.get("logprobs") or {}).get("content")
            logprobs = None if logprobs is None else [float(t["logprob"]) for t in logprobs]
        else:  # /completions
            text, reasoning = choice["text"], None
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}, not a string")
        return Completion(text=text, token_ids=choice.get("token_ids"), finish_reason=choice.get("finish_reason"),
                          prompt_tokens=usage.get("prompt_tokens"),
                          completion_tokens=usage.get("completion_tokens") if n == 1 else None,  # summed over choices
                          logprobs=logprobs, reasoning=reasoning)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "url": self.base_url,
                "api_key_env": self.api_key_env}


def server_message(resp: httpx.Response) -> str:
    """The server's error message (OpenAI ``{"error": {"message": ...}}`` or the raw text), shortened."""
    try:
        err = resp.json().get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return str(message or resp.text)[:300]
