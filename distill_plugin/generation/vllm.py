"""vLLM offline engine (``LLM.generate`` on token ids or rendered chats); vllm is imported lazily.

vLLM needs a GPU: the CPU test suite skips its tests when vllm is missing. All prompts of a call go
to vLLM at once; it schedules them (continuous batching).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .base import Backend, Completion, OnDone, OnError, Prompt, SamplingParams, TopK, is_token_ids, render_chat


class VLLMBackend(Backend):
    """``vllm.LLM(model, **llm_kwargs)``; give ``max_logprobs >= k`` for ``prompt_topk`` with k > 20."""

    name = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("the vllm backend needs `pip install vllm` (GPU machine)") from e
        self.model_name = model
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       dtype=dtype, **llm_kwargs)

    def generate(self, prompts: Iterable[Prompt], sampling: SamplingParams, on_done: OnDone,
                 on_error: OnError | None = None) -> None:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        params = VLLMSampling(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed,
                              logprobs=0 if sampling.logprobs else None)
        prompts, tok = list(prompts), self.llm.get_tokenizer()
        texts = [None if is_token_ids(p) else render_chat(tok, p) for p in prompts]
        # the rendered text already holds the template's special tokens: no second BOS
        ids = [list(p) if t is None else tok(t, add_special_tokens=False)["input_ids"] for p, t in zip(prompts, texts)]
        inputs = [TokensPrompt(prompt_token_ids=i) for i in ids]
        outputs = self.llm.generate(inputs, params, use_tqdm=True)
        for i, (req, text) in enumerate(zip(outputs, texts)):
            n_prompt = len(req.prompt_token_ids or [])
            on_done(i, [Completion(
                text=o.text, token_ids=list(o.token_ids), finish_reason=o.finish_reason, prompt_tokens=n_prompt,
                completion_tokens=len(o.token_ids), prompt_text=text,
                logprobs=None if o.logprobs is None else [step[t].logprob for step, t in zip(o.logprobs, o.token_ids)])
                for o in req.outputs])

    def prompt_topk(self, sequences: Sequence[list[int]], masks: Sequence[np.ndarray], k: int,
                    temperature: float = 1.0, vocab_size: int | None = None) -> list[TopK]:
        """vLLM ``prompt_logprobs`` (``max_tokens=1``). For prompt token j >= 1 vLLM reports the top-k
        of the distribution predicting token j (from position j-1) plus the actual token: in our
        convention, position t = j - 1. Its prompt log-probs are of the raw logits, so only
        ``temperature == 1`` is accepted. Candidates are taken by rank (``Logprob.rank <= k``),
        dropping the actual token when it lies outside the top-k, and ids at or above ``vocab_size``
        (vLLM normalises over the padded head; the padding rows' mass, ~0 for trained checkpoints,
        ends up in the training loss's tail bucket)."""
        if temperature != 1.0:
            raise ValueError("the vllm backend captures at temperature 1.0; use the hf backend for others")
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        params = VLLMSampling(max_tokens=1, prompt_logprobs=k, temperature=1.0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params,
                                    use_tqdm=False)
        result = []
        for mask, out in zip(masks, outputs):
            positions = np.flatnonzero(mask)
            ids = np.zeros((len(positions), k), dtype=np.int64)
            vals = np.full((len(positions), k), -np.inf, dtype=np.float32)
            for row, t in enumerate(positions):
                cands = sorted((lp.rank, tok, lp.logprob) for tok, lp in out.prompt_logprobs[t + 1].items()
                               if lp.rank is not None and lp.rank <= k and (vocab_size is None or tok < vocab_size))
                for j, (_, tok, value) in enumerate(cands[:k]):
                    ids[row, j], vals[row, j] = tok, value
            result.append((ids, vals))
        return result

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name}
