"""A teacher in an inference server: each batch's top-k log-probs over HTTP (``distill.teacher_server``).

    ServerTopKSource   sends the batch's token ids to a vLLM-compatible ``/completions`` endpoint
                       (``generation.prompt_logprobs``: ``prompt_logprobs=k``, or ``echo`` +
                       ``logprobs`` for servers that only do that) → ``TopKLogprobs`` at capture
                       temperature 1, the signal of the offline top-k loss (``losses.topk``: same
                       tail bucket, same re-tempering to the training T). No new loss maths.

Layout: the answer is put in the offline collator's layout (``offline.collator``): ``[B, T, k]``,
entry [b, t] the teacher's distribution at position t, predicting token t+1 (prompt log-prob
entry t+1 of the request), -inf where absent; the trainer's ``[B, T-1]`` supervised mask
(``labels[b, t+1] != -100``) then selects the same rows as for the student.

What is sent: the positions the student trains on, split into the documents the student attends
over: a row is cut where ``attention_mask`` is 0 or changes value (Axolotl's packed sequence ids)
or ``position_ids`` do not go up by one (packed documents restart at 0), so the teacher never
attends across packed documents or padding. A document is sent up to the token after its last
supervised position (a causal model's later tokens change nothing before them). The last position
of a document has no teacher entry (its next token belongs to another document): CE only.

Prefetch: ``read_ahead`` wraps the training epoch's batch iterator so the requests of the next
``prefetch_steps`` optimizer steps' micro-batches are in flight while the student trains on the
current ones (a bounded queue: at most ``prefetch_steps × gradient_accumulation_steps`` batches
ahead). Requests run on one background event loop with one HTTP client and at most
``max_concurrency`` requests in flight; the retries, backoff and error messages are the generation
layer's (``OpenAIHTTPBackend.send``); on top of them a training batch's requests ride out a
server restart for up to ``max_outage_s`` (``teachers.outage``; the start-up checks do not wait: an
unreachable server at start is an error at once), and a malformed answer is asked for again
(``MALFORMED_ATTEMPTS`` in all) before ``MalformedAnswers`` stops the run like a spent outage. Every process asks for its own batches (DDP). The time the
trainer blocks on the server is logged as ``teacher_wait_s`` (seconds per optimizer step).

Shutdown: ``close`` (also ``with`` exit and, for the trainer's source, interpreter exit) cancels
the requests still in flight (the read-ahead always has some when training ends) and joins the
loop's thread. A daemon thread left inside a torch op at interpreter exit aborts the process
("terminate called without an active exception") after the model is saved.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import SetupError
from ..generation.base import GenerationError
from ..generation.openai_http import OpenAIHTTPBackend
from ..generation.prompt_logprobs import decoded_prompt_tokens, parse_topk, score_body
from ..losses.chunked import supervised_mask
from ..signals import LABELS, TEACHER_REQUEST, TopKLogprobs
from .outage import MalformedAnswers, OutageBudget, TeacherStopped, agree_on_outage

LOG = logging.getLogger("axolotl.distill_plugin")
KEY = "distill.teacher_server"
MALFORMED_ATTEMPTS = 3  # asks per document before a malformed answer stops the run
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789 (x+y)^2 = x^2 + 2xy + y^2\n"


class ServerSettings(Protocol):
    """What the served teacher reads of ``distill.teacher_server`` (``methods.served.TeacherServerConfig``)."""

    url: str
    model: str
    top_k: int
    api_key_env: str | None
    timeout_s: float
    max_concurrency: int
    prefetch_steps: int
    max_outage_s: float


class ServerSetupError(SetupError):
    """The server cannot serve this run (unreachable, wrong model, limit below k, other tokenizer)."""


def documents(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask=None, position_ids=None) -> list:
    """``[(b, start, ids)]``: the spans of the batch to score, one per document with supervision.

    ``ids`` runs from the document's first token to the token after its last supervised position.
    """
    mask = supervised_mask(labels).cpu().numpy()
    ids = input_ids.cpu().numpy()
    B, T = ids.shape
    attn = np.ones((B, T), dtype=np.int64) if attention_mask is None else attention_mask.cpu().numpy()
    cut = np.zeros((B, T), dtype=bool)
    cut[:, 1:] = attn[:, 1:] != attn[:, :-1]
    if position_ids is not None:
        pos = position_ids.cpu().numpy().reshape(-1, T)
        cut[:, 1:] |= pos[:, 1:] != pos[:, :-1] + 1
    out = []
    for b in range(B):
        starts = [0, *np.flatnonzero(cut[b]).tolist(), T]
        for start, stop in zip(starts[:-1], starts[1:]):
            supervised = np.flatnonzero(mask[b, start:stop - 1])  # rows t with t+1 in the document
            if attn[b, start] != 0 and len(supervised):
                out.append((b, start, ids[b, start:start + supervised[-1] + 2].tolist()))
    return out


class ServerTopKSource:
    """Top-k teacher log-probs from a served model; see the module docstring."""

    produces = (TopKLogprobs,)
    capture_temperature = 1.0  # prompt log-probs are of the raw logits

    def __init__(self, config: ServerSettings, tokenizer, check_tokenizer: bool = True, max_retries: int = 5,
                 backoff_s: float = 1.0, outage_backoff_max_s: float = 30.0):
        self.config, self.k, self.tokenizer, self.check_tokenizer = config, config.top_k, tokenizer, check_tokenizer
        self.vocab_size = len(tokenizer)  # ids above it (padding rows) are dropped: their mass is in the tail
        self.url = config.url.rstrip("/")
        # No key variable: no Authorization header (never a default variable holding another service's key).
        self.backend = OpenAIHTTPBackend(config.model, base_url=self.url, api_key_env=config.api_key_env or "",
                                         concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                                         max_retries=max_retries, backoff_s=backoff_s)
        self.api: str | None = None
        # per-batch requests ride out a restart for up to max_outage_s (teachers.outage); start-up checks do not
        self.outage = OutageBudget(self.url, config.max_outage_s, backoff_s, outage_backoff_max_s)
        self._wait_s, self._waited_batches = 0.0, 0
        self._ahead: ReadAhead | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-server", daemon=True)
        self._thread.start()
        self._client, self._sem = self._run(self._open())
        atexit.register(self.close)  # before the interpreter stops daemon threads mid-op

    def __repr__(self) -> str:  # never the key
        return f"ServerTopKSource(url={self.url!r}, model={self.config.model!r}, k={self.k}, api={self.api})"

    async def _open(self):
        return self.backend.client(), asyncio.Semaphore(self.config.max_concurrency)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # --- start-up checks ---
    def connect(self) -> str:
        """Check the server before training; pick the wire format. Returns a one-line description.

        Raises ``ServerSetupError`` (one line naming the URL) when the server is unreachable, does
        not serve ``model``, refuses or caps ``top_k`` (vLLM's ``max_logprobs``), or tokenises
        differently from the student (vocabulary probe)."""
        if self.config.api_key_env and self.backend._api_key is None:
            raise ServerSetupError(f"{KEY}.api_key_env: environment variable {self.config.api_key_env} is not set")
        try:
            served = [m.get("id") for m in self._run(self._get(self.url + "/models")).get("data", [])]
        except (GenerationError, ValueError, AttributeError) as err:
            raise ServerSetupError(f"{KEY}.url: {err}") from None
        if self.config.model not in served:
            raise ServerSetupError(f"{KEY}.model: {self.url}/models serves {served}, not {self.config.model!r}")
        probe = probe_ids(self.tokenizer)
        choice = self._probe_api(probe)
        counts = (parse_topk(choice, len(probe), self.k, self.api)[1] > -np.inf).sum(1)
        if counts.min() < min(self.k, self.vocab_size):
            raise ServerSetupError(f"{KEY}.top_k: {self.url} returned {min(counts)} log-probs per position, not "
                                   f"top_k={self.k}: the server caps them (vLLM: --max-logprobs); lower top_k")
        if self.check_tokenizer:
            self._check_vocabulary(probe, choice)
        return f"{self.url} ({self.config.model}), top-{self.k} via {self.api}, {self.config.max_concurrency} requests in flight"

    def _probe_api(self, probe: list[int]) -> dict:
        errors = []
        for api in ("prompt_logprobs", "echo"):
            try:
                choice = self._run(self._post(score_body(self.config.model, probe, self.k, api)))
                parse_topk(choice, len(probe), self.k, api)
            except GenerationError as err:
                if err.status == 400 and "logprobs" in str(err) and ("max" in str(err) or "greater" in str(err)):
                    raise ServerSetupError(f"{KEY}.top_k: {err} — start the server with a larger limit (vLLM: "
                                           f"--max-logprobs {self.k}) or lower top_k") from None
                if not isinstance(err.status, int) or err.status >= 500 or err.status in (401, 403, 404):
                    raise ServerSetupError(f"{KEY}: {err}") from None
                errors.append(f"{api}: {err}")
            except (KeyError, ValueError, TypeError) as err:
                errors.append(f"{api}: {type(err).__name__}: {err}")
            else:
                self.api = api
                return choice
        raise ServerSetupError(f"{KEY}: {self.url}/completions returns neither prompt_logprobs nor echoed logprobs "
                               f"({'; '.join(errors)})")

    def _check_vocabulary(self, probe: list[int], choice: dict) -> None:
        """The server's text of each probe token must be the student tokenizer's (decoded, or the raw
        token string: servers report either); the probe spans the vocabulary, its last id included."""
        if self.api == "echo":
            choice = self._run(self._post(score_body(self.config.model, probe, self.k, "echo", token_ids=False)))
        texts = decoded_prompt_tokens(choice, probe, self.api)
        compared, raw = 0, self.tokenizer.convert_ids_to_tokens(probe)
        for j, text in enumerate(texts, start=1):
            decoded = self.tokenizer.decode([probe[j]])
            if text is None or text == "" or "\ufffd" in decoded:
                continue  # no text, or a partial UTF-8 byte: not comparable
            if text not in (decoded, raw[j]):
                raise ServerSetupError(
                    f"{KEY}: {self.url} tokenises differently from the student: token id {probe[j]} is {text!r} "
                    f"there, {decoded!r} here; top-k KD needs one shared tokenizer")
            compared += 1
        if compared < len(texts) // 2:
            raise ServerSetupError(f"{KEY}: {self.url} returns no token texts to check its tokenizer against the "
                                   "student's; set `distill.check_tokenizer: false` only if you know the ids line up")

    async def _get(self, url: str) -> dict:
        return (await self.backend.send(self._client, self._sem, url, None)).json()

    async def _post(self, body: dict, ride_out: bool = False) -> dict:
        url = self.url + "/completions"
        send = lambda: self.backend.send(self._client, self._sem, url, body)  # noqa: E731
        resp = await (self.outage.run(send) if ride_out else send())
        try:
            return resp.json()["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise GenerationError(f"{url}: unparsable response ({type(err).__name__}: {err}): {resp.text[:200]}",
                                  "unparsable") from None

    # --- per batch ---
    def submit(self, batch: dict):
        """Start the teacher requests of ``batch`` (CPU or device tensors); a ``concurrent.futures.Future``
        of ``(ids [B, T, k], log-probs [B, T, k])`` on the CPU."""
        if self.api is None:
            raise RuntimeError(f"{self!r}: call connect() before asking for teacher signals")
        spans = documents(batch["input_ids"], batch[LABELS], batch.get("attention_mask"), batch.get("position_ids"))
        return asyncio.run_coroutine_threadsafe(self._score(spans, *batch["input_ids"].shape), self._loop)

    async def _score(self, spans: list, B: int, T: int):
        answers = await asyncio.gather(*(self._scored(span) for _, _, span in spans))
        ids = torch.zeros(B, T, self.k, dtype=torch.long)
        lps = torch.full((B, T, self.k), -torch.inf)
        for (b, start, span), (top, values) in zip(spans, answers):
            ids[b, start:start + len(span) - 1] = torch.from_numpy(top)
            lps[b, start:start + len(span) - 1] = torch.from_numpy(values)
        return ids, lps

    async def _scored(self, span: list[int]):
        """One document's top-k; a malformed answer (not JSON, or not the positions and k asked for: a
        proxy's error page, a cut body) is asked for again, ``MALFORMED_ATTEMPTS`` times in all with
        backoff, then ``MalformedAnswers`` (one line naming the URL)."""
        body = score_body(self.config.model, span, self.k, self.api)
        for attempt in range(1, MALFORMED_ATTEMPTS + 1):
            try:
                return parse_topk(await self._post(body, ride_out=True), len(span), self.k, self.api, self.vocab_size)
            except GenerationError as err:
                if err.status != "unparsable":
                    raise
                why = " ".join(str(err).split()).removeprefix(f"{self.url}/completions: ")[:300]
            except (KeyError, ValueError, TypeError, IndexError) as err:
                why = f"unparsable prompt log-probs ({type(err).__name__}: {err})"
            if attempt < MALFORMED_ATTEMPTS:
                LOG.warning("distill_plugin: %s/completions: malformed answer (%s); asking again (%d/%d)", self.url, why,
                            attempt, MALFORMED_ATTEMPTS - 1)
                await asyncio.sleep(self.outage.backoff_s * 2 ** (attempt - 1))
        raise MalformedAnswers(f"{self.url}/completions", MALFORMED_ATTEMPTS, why)

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        future = inputs.get(TEACHER_REQUEST) or self.submit(inputs)  # evaluation batches are not read ahead
        started = time.perf_counter()
        try:
            ids, lps, outage = *future.result(), None
        except TeacherStopped as err:
            outage = err
        agree_on_outage(outage, self.url, self.config.max_outage_s, mask.device)  # every process stops together
        if torch.is_grad_enabled():  # training micro-batches only
            self._wait_s += time.perf_counter() - started
            self._waited_batches += 1
        ids, lps = ids.to(mask.device), lps.to(mask.device)
        return {TopKLogprobs: TopKLogprobs(ids[:, :-1][mask], lps[:, :-1][mask], self.capture_temperature)}

    def read_ahead(self, iterator, batches_per_step: int):
        """The training epoch's iterator with the next ``prefetch_steps`` steps' requests in flight."""
        if not self.config.prefetch_steps:
            return iterator
        if self._ahead is None or self._ahead.source is not iterator:  # a new epoch
            self._ahead = ReadAhead(iterator, self.submit, self.config.prefetch_steps * batches_per_step)
        return self._ahead

    def pop_metrics(self, batches_per_step: int) -> dict[str, float]:
        """``teacher_wait_s``: seconds blocked on the server per optimizer step since the last log."""
        if not self._waited_batches:
            return {}
        steps = max(self._waited_batches / batches_per_step, 1e-12)
        wait, self._wait_s, self._waited_batches = self._wait_s / steps, 0.0, 0
        return {"teacher_wait_s": round(wait, 4)}

    def __enter__(self) -> "ServerTopKSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the requests in flight, close the HTTP client, stop and join the background loop."""
        atexit.unregister(self.close)
        if self._loop.is_running():
            try:  # bounded: a hung connection must not hang the process's exit
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            except TimeoutError:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()


def connected_source(config, tokenizer) -> ServerTopKSource:
    """The training source for ``config.teacher_server`` (a ``DistillConfig``), checked at start-up
    (``connect``: ``ServerSetupError``, one line naming the URL) and logged once; closed again if the
    check fails."""
    served = ServerTopKSource(config.teacher_server, tokenizer, config.check_tokenizer)
    try:
        described = served.connect()
    except BaseException:
        served.close()
        raise
    LOG.info("distill_plugin: teacher = served %s; prefetch %d step(s); vocab %d shared tokens",
             described, config.teacher_server.prefetch_steps, len(tokenizer))
    return served


class ReadAhead:
    """Iterator over ``source`` keeping ``depth`` batches read ahead, each with its teacher request
    submitted (``batch[TEACHER_REQUEST]``). Batches keep their order; nothing else is changed."""

    def __init__(self, source, submit, depth: int):
        self.source, self.submit, self.depth = source, submit, depth
        self.queue: deque = deque()
        self.exhausted = False

    def __iter__(self):
        return self

    def __next__(self):
        while len(self.queue) <= self.depth and not self.exhausted:
            try:
                batch = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            if isinstance(batch, dict) or hasattr(batch, "keys"):
                batch[TEACHER_REQUEST] = self.submit(batch)
            self.queue.append(batch)
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()


def probe_ids(tokenizer, spread: int = 48) -> list[int]:
    """A probe prompt: the tokens of a fixed text, then ids spread evenly over the vocabulary (its
    last id included), so a shifted or reordered vocabulary shows at many places."""
    vocab = len(tokenizer)
    text = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    return [*text, *np.linspace(0, vocab - 1, min(spread, vocab)).round().astype(int).tolist()]
