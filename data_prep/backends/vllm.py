"""vLLM offline backend (``LLM.chat`` / ``LLM.generate``); vllm is imported lazily.

Not exercised by the CPU test suite (vllm needs a GPU); its test is skipped when vllm is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import THINK_PREFILL, Backend, Generation, OnDone, PromptStyle, Sampling


class VLLMBackend(Backend):
    """All prompts of a batch go to vLLM at once; it schedules them (continuous batching)."""

    name = "vllm"

    def __init__(self, model: str, sampling: Sampling, style: PromptStyle,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", **llm_kwargs):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("the vllm backend needs `pip install vllm` (GPU machine)") from e
        self.model_name, self.sampling, self.style = model, sampling, style
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       dtype=dtype, **llm_kwargs)
        self.params = SamplingParams(n=sampling.n, temperature=sampling.temperature,
                                     top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                                     seed=sampling.seed)

    def run(self, batch: Sequence[list[dict]], on_done: OnDone) -> None:
        if self.style.prefill_think:
            # LLM.chat cannot prefill; render with the teacher's template and use LLM.generate.
            tok = self.llm.get_tokenizer()
            prompts = []
            for m in batch:
                text = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                prompts.append(text if text.endswith(THINK_PREFILL) else text + THINK_PREFILL)
            outputs = self.llm.generate(prompts, self.params, use_tqdm=True)
        else:
            outputs = self.llm.chat(list(batch), self.params, use_tqdm=True)
        for i, req in enumerate(outputs):
            n_prompt = len(req.prompt_token_ids or [])
            on_done(i, [Generation.from_text(o.text, o.finish_reason, n_prompt, len(o.token_ids),
                                             prefilled=self.style.prefill_think)
                        for o in req.outputs])

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, **self.sampling.model_dump()}
