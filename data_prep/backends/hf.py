"""transformers ``generate`` backend for small local teachers (CPU or one GPU)."""

from __future__ import annotations

from collections.abc import Sequence

from .base import THINK_PREFILL, Backend, Generation, OnDone, PromptStyle, Sampling


class HFBackend(Backend):
    """Batched sampling with ``model.generate``; ``batch_size`` prompts × ``n`` samples at once."""

    name = "hf"

    def __init__(self, model: str, sampling: Sampling, style: PromptStyle, batch_size: int = 8,
                 device: str | None = None, dtype: str = "auto", chat_template: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name, self.sampling, self.style, self.batch_size = model, sampling, style, batch_size
        self.tok = AutoTokenizer.from_pretrained(model)
        if chat_template:
            self.tok.chat_template = chat_template
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = set(eos) | {self.tok.eos_token_id}

    def render(self, messages: list[dict]) -> str:
        """The teacher's own chat template, generation prompt, optional ``<think>\\n`` prefill."""
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.style.prefill_think and not text.endswith(THINK_PREFILL):
            text += THINK_PREFILL
        return text

    def run(self, batch: Sequence[list[dict]], on_done: OnDone) -> None:
        for start in range(0, len(batch), self.batch_size):
            chunk = list(batch[start:start + self.batch_size])
            for j, gens in enumerate(self._generate(chunk)):
                on_done(start + j, gens)

    def _generate(self, chunk: list[list[dict]]) -> list[list[Generation]]:
        import torch

        s = self.sampling
        prompts = [self.render(m) for m in chunk]
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        sample = s.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc, do_sample=sample, temperature=s.temperature if sample else None,
                top_p=s.top_p if sample else None, top_k=0 if sample else None,
                max_new_tokens=s.max_tokens, num_return_sequences=s.n,
                pad_token_id=self.tok.pad_token_id, eos_token_id=sorted(self.eos_ids))
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for i in range(len(chunk)):
            gens = []
            for ids in new[i * s.n:(i + 1) * s.n]:
                stop = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
                body = ids if stop is None else ids[:stop]
                text = self.tok.decode(body, skip_special_tokens=False)
                gens.append(Generation.from_text(
                    text, "length" if stop is None else "stop", int(prompt_lens[i]),
                    len(body) + (0 if stop is None else 1),
                    # R1-Distill templates prefill "<think>\n" themselves: output starts inside it
                    prefilled=prompts[i].endswith(THINK_PREFILL)))
            results.append(gens)
        return results

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, **self.sampling.model_dump()}
