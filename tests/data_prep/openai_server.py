"""A minimal, real OpenAI-compatible ``/v1/chat/completions`` server for the HTTP backend test.

``transformers serve`` would be the natural choice but needs the ``openai`` package, which this
project does not install; this server runs the tiny model with transformers and answers in the
OpenAI schema (``choices[].message.content`` / ``reasoning_content``, ``finish_reason``, ``usage``).
Fault injection proves the client's retries and timeouts: ``--fail-first K`` answers the first K
requests with 503, ``--slow-request I --slow-seconds S`` stalls request number I for S seconds; a
user message containing ``<<reject>>`` gets a 400 with an OpenAI error message (a prompt over the
context length), one containing ``<<garbage>>`` a 200 whose body is not JSON.
``--synthetic-latency MEAN`` skips the model: each request sleeps a log-normal latency (mean MEAN
seconds, sigma ``--latency-sigma``, seeded by the request number: a long tail) and answers a fixed
text — the generation benchmark's server, measuring the client's scheduling, not a model.
``--scripted FILE`` also skips the model: a JSON list of ``[substring, reply]`` pairs; a request
whose messages contain a substring is answered with its reply (the first that matches; the pair
with substring ``""`` matches everything): a judge whose verdicts a test chooses, over the same
HTTP, retries (``--fail-first``) and error paths (``<<reject>>``, ``<<garbage>>``). A reply may be
a list: the k-th request with the same messages gets ``random.Random(f"{k}:{messages}").choice``
of it (a scripted teacher whose n samples differ, reproducibly whatever the request order).

Run: python openai_server.py MODEL_DIR --port P [--api-key-env VAR] [--split-reasoning] ...
"""

import argparse
import asyncio
import math
import os
import random
import threading

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from transformers import AutoModelForCausalLM, AutoTokenizer


def build_app(model_dir, fail_first=0, slow_request=-1, slow_seconds=0.0, split_reasoning=False,
              api_key=None, synthetic_latency=0.0, latency_sigma=1.0, scripted=None):
    if synthetic_latency:
        return synthetic_app(synthetic_latency, latency_sigma)
    if scripted:
        return scripted_app(scripted, fail_first)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    app = FastAPI()
    state = {"requests": 0, "served": 0, "auth_failures": 0, "bodies": []}
    lock = threading.Lock()

    @app.get("/stats")
    def stats():
        return state

    def sample(input_ids, body) -> list[tuple[list[int], int | None]]:
        """``n`` samples of ``input_ids [1, L]``: (generated ids before the stop, stop index or None)."""
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                                 temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                                 top_k=0, max_new_tokens=int(body.get("max_tokens", 64)),
                                 num_return_sequences=int(body.get("n", 1)), pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        samples = []
        for ids in out[:, input_ids.shape[1]:].tolist():
            stop = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else None
            samples.append((ids if stop is None else ids[:stop], stop))
        return samples

    @app.post("/v1/completions")
    async def completions(request: Request):
        """Token-id prompts (``prompt`` = a list of ids, as vLLM accepts)."""
        body = await request.json()
        ids = torch.tensor([body["prompt"]])
        samples = sample(ids, body)
        choices = [{"index": i, "text": tok.decode(b, skip_special_tokens=False),
                    "finish_reason": "length" if stop is None else "stop"} for i, (b, stop) in enumerate(samples)]
        total = sum(len(b) + (stop is not None) for b, stop in samples)
        return {"id": "cmpl", "object": "text_completion", "choices": choices,
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": total}}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        with lock:
            state["requests"] += 1
            k = state["requests"]
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            state["auth_failures"] += 1
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        if k <= fail_first:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if k == slow_request:
            await asyncio.sleep(slow_seconds)
        body = await request.json()
        state["bodies"].append({key: v for key, v in body.items() if key != "messages"})
        msgs = body["messages"]
        said = " ".join(str(m.get("content")) for m in msgs)
        if "<<reject>>" in said:
            message = "This model's maximum context length is 64 tokens; the prompt is longer"
            return JSONResponse({"error": {"message": message, "type": "BadRequestError"}}, status_code=400)
        if "<<garbage>>" in said:
            return PlainTextResponse("upstream proxy error")
        if body.get("continue_final_message"):
            text = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            prefill = msgs[-1]["content"]
            text += prefill
        else:
            text, prefill = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), ""
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        samples = sample(enc["input_ids"], body)
        choices, total = [], 0
        for i, (body_ids, stop) in enumerate(samples):
            total += len(body_ids) + (stop is not None)
            content = tok.decode(body_ids, skip_special_tokens=False)
            msg = {"role": "assistant", "content": content}
            full = prefill + content
            if split_reasoning and "</think>" in full:  # like vLLM's --reasoning-parser
                r, a = full.split("</think>", 1)
                msg = {"role": "assistant", "reasoning_content": r.replace("<think>", "").strip("\n"),
                       "content": a.strip()}
            choices.append({"index": i, "message": msg, "finish_reason": "length" if stop is None else "stop"})
        state["served"] += 1
        return {"id": f"cmpl-{k}", "object": "chat.completion", "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": total,
                          "total_tokens": enc["input_ids"].shape[1] + total}}

    return app


def scripted_app(path: str, fail_first: int = 0):
    """Answers each request with the reply of the first ``[substring, reply]`` its messages contain."""
    import json

    rules = json.loads(open(path, encoding="utf-8").read())
    app = FastAPI()
    state = {"requests": 0, "served": 0, "bodies": []}
    asked: dict[str, int] = {}

    @app.get("/stats")
    def stats():
        return state

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state["requests"] += 1
        if state["requests"] <= fail_first:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        body = await request.json()
        said = "\n".join(str(m.get("content")) for m in body["messages"])
        state["bodies"].append(body)
        if "<<reject>>" in said:
            return JSONResponse({"error": {"message": "prompt too long", "type": "BadRequestError"}}, status_code=400)
        if "<<garbage>>" in said:
            return PlainTextResponse("upstream proxy error")
        reply = next((r for sub, r in rules if sub in said), None)
        if reply is None:
            return JSONResponse({"error": {"message": "no scripted reply matches"}}, status_code=400)
        if isinstance(reply, list):
            k = asked[said] = asked.get(said, -1) + 1
            reply = random.Random(f"{k}:{said}").choice(reply)
        state["served"] += 1
        n = int(body.get("n", 1))
        return {"id": f"cmpl-{state['requests']}", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                            for i in range(n)],
                "usage": {"prompt_tokens": len(said), "completion_tokens": len(reply) * n,
                          "total_tokens": len(said) + len(reply) * n}}

    return app


def synthetic_app(mean: float, sigma: float):
    """Answers after a seeded log-normal latency with mean ``mean`` seconds; no model."""
    app = FastAPI()
    state = {"requests": 0, "latencies": []}
    mu = math.log(mean) - sigma ** 2 / 2  # E[lognormal(mu, sigma)] = exp(mu + sigma^2 / 2) = mean

    @app.get("/stats")
    def stats():
        return state

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["requests"] += 1
        latency = random.Random(state["requests"]).lognormvariate(mu, sigma)
        state["latencies"].append(latency)
        await asyncio.sleep(latency)
        text = "<think>\nok\n</think>\n\\boxed{1}"
        n = int(body.get("n", 1))
        return {"id": "cmpl", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            for i in range(n)],
                "usage": {"prompt_tokens": 10, "completion_tokens": 8 * n, "total_tokens": 10 + 8 * n}}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--slow-request", type=int, default=-1)
    ap.add_argument("--slow-seconds", type=float, default=0.0)
    ap.add_argument("--split-reasoning", action="store_true")
    ap.add_argument("--api-key-env", default=None)
    ap.add_argument("--synthetic-latency", type=float, default=0.0)
    ap.add_argument("--latency-sigma", type=float, default=1.0)
    ap.add_argument("--scripted", default=None)
    a = ap.parse_args()
    key = os.environ.get(a.api_key_env) if a.api_key_env else None
    torch.set_num_threads(1)
    app = build_app(a.model_dir, a.fail_first, a.slow_request, a.slow_seconds, a.split_reasoning, key,
                    a.synthetic_latency, a.latency_sigma, a.scripted)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
