"""A small teacher server: the part of vLLM's OpenAI completions API that ``teacher_server`` uses.

    python -m distill_plugin.serve MODEL_DIR --port 8000 [--served-model-name NAME]
        [--max-logprobs 20] [--api-key-env VAR] [--max-body-bytes 16777216] [--device cuda:0] [--dtype bfloat16]

For users without vLLM (a teacher on a second CPU box or an older GPU) and for the tests, which
run it on 127.0.0.1 over the tiny teacher. It scores prompts, it does not sample:

    GET  /v1/models          ``{"data": [{"id": NAME, "max_model_len": ...}]}``
    POST /v1/completions     ``prompt``: token ids (or a list of them, or text); ``prompt_logprobs``
                             (vLLM's format) and/or ``echo`` + ``logprobs`` (legacy OpenAI format,
                             ``return_tokens_as_token_ids`` honoured); ``max_tokens`` ≤ 1, the one
                             "generated" token is the greedy next token.

Like vLLM it refuses more log-probs than ``--max-logprobs`` (default 20, vLLM's) with a 400 naming
the limit, an unknown model name with a 404, and token ids outside the vocabulary with a 400. With
``--api-key-env`` every request must send ``Authorization: Bearer <key>`` (compared in constant
time), else 401. A request body larger than ``--max-body-bytes`` (default 16 MiB, far above a
32k-token document's few hundred kB) is refused with a 413 before it is held in memory whole,
whether it declares its ``Content-Length`` or streams chunks.
Log-probs are ``log_softmax`` of the raw logits (T = 1; vLLM does not temper prompt log-probs
either) over the tokenizer's vocabulary (lm_head padding rows cut, as the offline capture does),
in fp32, ``--chunk`` positions through the head at a time (``generation.hf.head_logprobs``).
Entry j of the prompt log-probs is the distribution at position j-1 that predicts token j.
"""

from __future__ import annotations

import argparse
import hmac
import os
import threading

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .generation.hf import head_logprobs
from .modeling import final_hidden_states, output_head


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "code": status,
                         "error": {"message": message, "code": status}}, status_code=status)


class Scorer:
    """The model side: top-k (+ the actual token's log-prob and rank) at every prompt position."""

    def __init__(self, model, tokenizer, chunk: int = 1024):
        self.model, self.tokenizer, self.chunk = model.eval(), tokenizer, chunk
        self.vocab_size = len(tokenizer)
        self.head = output_head(model)
        # final_hidden_states swaps the lm_head out during a forward: one forward at a time.
        self.lock = threading.Lock()
        self._texts: dict[int, str] = {}

    @torch.inference_mode()
    def score(self, ids: list[int], k: int) -> tuple[list, int]:
        """Per prompt position j ≥ 1: ``(top-k ids, their log-probs, log-prob of ids[j], its rank)``
        from the distribution at j-1; and the greedy next token after the prompt."""
        device = self.head.weight.device
        inputs = {"input_ids": torch.tensor([ids], device=device),
                  "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}
        with self.lock:
            hidden = final_hidden_states(self.model, inputs)[0]
        targets = torch.tensor(ids[1:] + [0], device=device)
        rows, greedy = [], 0
        for start, logp in head_logprobs(hidden, self.head, 1.0, self.chunk, self.vocab_size):
            values, top = logp.topk(max(k, 1), dim=-1)
            actual = logp.gather(1, targets[start:start + len(logp), None])
            rank = (logp > actual).sum(-1) + 1
            rows += list(zip(top[:, :k].tolist(), values[:, :k].tolist(), actual[:, 0].tolist(), rank.tolist()))
            greedy = int(top[-1, 0])
        return rows[:-1], greedy  # the last position predicts the token after the prompt

    def text(self, token: int) -> str:
        """A token's text (``decoded_token``), cached: every answer names k+1 tokens per position."""
        if token not in self._texts:
            self._texts[token] = self.tokenizer.decode([token])
        return self._texts[token]


def prompt_logprobs(scorer: Scorer, ids: list[int], rows: list) -> list:
    """vLLM's ``prompt_logprobs``: None, then per token j ≥ 1 ``{"<id>": {logprob, rank, decoded_token}}``."""
    out = [None]
    for j, (top, values, actual, rank) in enumerate(rows, start=1):
        entry = {str(t): {"logprob": v, "rank": r, "decoded_token": scorer.text(t)}
                 for r, (t, v) in enumerate(zip(top, values), start=1)}
        entry.setdefault(str(ids[j]), {"logprob": actual, "rank": rank, "decoded_token": scorer.text(ids[j])})
        out.append(entry)
    return out


def echo_logprobs(scorer: Scorer, ids: list[int], rows: list, greedy: int, as_ids: bool) -> dict:
    """Legacy ``logprobs`` of an echoed prompt (+ the greedy token): tokens, token_logprobs, top_logprobs."""
    name = (lambda t: f"token_id:{t}") if as_ids else scorer.text
    tops = [None] + [{name(t): v for t, v in zip(top, values)} | {name(ids[j]): actual}
                     for j, (top, values, actual, _) in enumerate(rows, start=1)]
    tokens = ids + [greedy]
    return {"tokens": [name(t) for t in tokens], "token_logprobs": [None] + [r[2] for r in rows] + [None],
            "top_logprobs": tops + [None], "text_offset": [0] * len(tokens)}


MAX_BODY_BYTES = 16 << 20


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 (declared by ``Content-Length``
    or counted while it streams); at most ``max_bytes`` of it is ever buffered."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def too_large(self, send) -> None:
        body = error(413, f"request body exceeds this server's limit of {self.max_bytes} bytes (--max-body-bytes)").body
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self.too_large(send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def key_matches(header: str | None, api_key: str) -> bool:
    """``Authorization: Bearer <api_key>``, compared in constant time (no timing oracle on the key)."""
    return hmac.compare_digest((header or "").encode(), f"Bearer {api_key}".encode())


def build_app(model, tokenizer, served_name: str, max_logprobs: int = 20, api_key: str | None = None,
              max_model_len: int | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    scorer = Scorer(model, tokenizer)
    max_model_len = max_model_len or getattr(model.config, "max_position_embeddings", None)
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def refused(request: Request, body: dict | None = None) -> JSONResponse | None:
        if api_key and not key_matches(request.headers.get("authorization"), api_key):
            return error(401, "invalid API key")
        if body is not None and body.get("model") not in (None, served_name):
            return error(404, f"The model `{body.get('model')}` does not exist.")
        return None

    @app.get("/v1/models")
    def models(request: Request):
        return refused(request) or {"object": "list", "data": [
            {"id": served_name, "object": "model", "owned_by": "distill_plugin", "max_model_len": max_model_len}]}

    @app.post("/v1/completions")
    def completions(request: Request, body: dict):  # sync: FastAPI runs it in its thread pool
        if (bad := refused(request, body)) is not None:
            return bad
        k_prompt, k_echo = body.get("prompt_logprobs"), body.get("logprobs")
        for name, k in (("prompt logprobs", k_prompt), ("logprobs", k_echo)):
            if k is not None and k > max_logprobs:
                return error(400, f"Requested {name} of {k}, which is greater than max allowed: {max_logprobs}")
        if int(body.get("max_tokens", 1)) > 1:
            return error(400, "this server scores prompts; max_tokens must be 0 or 1")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)) else prompts
        choices, used = [], 0
        for index, prompt in enumerate(prompts or []):
            ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else [int(t) for t in prompt]
            if not ids or min(ids) < 0 or max(ids) >= scorer.vocab_size:
                return error(400, f"prompt {index}: token ids must lie in [0, {scorer.vocab_size}) and not be empty")
            rows, greedy = scorer.score(ids, max(k_prompt or 0, k_echo or 0))
            choice = {"index": index, "text": scorer.text(greedy), "finish_reason": "length", "logprobs": None}
            if body.get("echo"):
                choice["text"] = scorer.tokenizer.decode(ids) + choice["text"]
                if k_echo is not None:
                    choice["logprobs"] = echo_logprobs(scorer, ids, rows, greedy, bool(body.get("return_tokens_as_token_ids")))
            if k_prompt is not None:
                choice["prompt_logprobs"] = prompt_logprobs(scorer, ids, rows)
            choices.append(choice)
            used += len(ids)
        return {"id": "cmpl-distill", "object": "text_completion", "model": served_name, "choices": choices,
                "usage": {"prompt_tokens": used, "completion_tokens": len(choices), "total_tokens": used + len(choices)}}

    return app


def load(model_dir: str, device: str = "cpu", dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
    return model, AutoTokenizer.from_pretrained(model_dir)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill_plugin.serve", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", help="a local transformers causal LM directory (or hub id)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None, help="name clients give as `model` (default: MODEL_DIR)")
    ap.add_argument("--max-logprobs", type=int, default=20, help="most log-probs per position a request may ask (vLLM's default 20)")
    ap.add_argument("--api-key-env", default=None, help="environment variable with the key clients must send")
    ap.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                    help="largest request body accepted; larger ones get a 413 (default 16 MiB)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return ap


def main(argv: list[str] | None = None, app_wrapper=None) -> None:
    """Serve; ``app_wrapper(app) -> app`` lets the tests add fault injection around the real app."""
    import uvicorn

    args = parser().parse_args(argv)
    model, tokenizer = load(args.model_dir, args.device, args.dtype)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    app = build_app(model, tokenizer, args.served_model_name or args.model_dir, args.max_logprobs, key,
                    max_body_bytes=args.max_body_bytes)
    uvicorn.run(app_wrapper(app) if app_wrapper else app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
