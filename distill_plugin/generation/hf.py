"""transformers engine: ``model.generate`` for sampling, a batched forward for prompt top-k.

For small local models (CPU or one GPU): the tests' teachers, a student sampling its own
completions, the offline capture of a teacher that fits on one device.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .base import Backend, Completion, OnDone, OnError, Prompt, SamplingParams, TopK, is_token_ids, render_chat, stop_ids


def head_logprobs(hidden, head, temperature: float, chunk: int, vocab_size: int | None = None):
    """Yield ``(start, log_softmax(lm_head(hidden[start:start+chunk]) / T))`` in fp32, chunk by chunk,
    so at most ``[chunk, V]`` logits exist at once. ``vocab_size`` cuts the head to its first rows
    (the tokenizer's vocabulary): padding rows take no probability mass and are never returned."""
    import torch
    import torch.nn.functional as F

    from distill_plugin.losses.kd import softcap

    weight = head.weight[:vocab_size]
    bias = None if head.bias is None else head.bias[:vocab_size]
    for start in range(0, hidden.shape[0], chunk):
        logits = softcap(F.linear(hidden[start:start + chunk], weight, bias).float(), head.softcap)
        yield start, torch.log_softmax(logits / temperature, dim=-1)


def topk_of_head(hidden, head, k: int, temperature: float, chunk: int, vocab_size: int | None = None):
    """``topk(log_softmax(lm_head(hidden) / T))`` over rows of ``hidden [n, H]`` (``head_logprobs``)."""
    import torch

    ids, vals = [], []
    for _, logp in head_logprobs(hidden, head, temperature, chunk, vocab_size):
        v, i = logp.topk(k, dim=-1)
        ids.append(i.cpu())
        vals.append(v.cpu())
    if not ids:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(ids), torch.cat(vals)


CDF_ROWS = 128  # rows per float64 cumulative sum in samples_of_head (128 × V = 151,936: 156 MB)


def samples_of_head(hidden, head, uniforms, temperature: float, proposal_temperature: float, chunk: int,
                    vocab_size: int | None = None):
    """Inverse-CDF draws from ``q ∝ p^(1/proposal_temperature)``, ``p = softmax(lm_head(hidden) / T)``:
    row n's draw j is the first id whose cumulative q (float64) exceeds ``uniforms[n, j]`` times the
    total. Returns ``ids`` int64 and ``log p − log q`` float32, both ``[n, S]`` (on the CPU)."""
    import torch

    uniforms = torch.as_tensor(np.asarray(uniforms), dtype=torch.float64)
    ids, log_w = [], []
    for start, logp in head_logprobs(hidden, head, temperature, chunk, vocab_size):
        logq = logp if proposal_temperature == 1.0 else torch.log_softmax(logp / proposal_temperature, dim=-1)
        for row in range(0, len(logp), CDF_ROWS):  # float64 cumulative sums of CDF_ROWS rows at a time
            lp, lq = logp[row:row + CDF_ROWS], logq[row:row + CDF_ROWS]
            cdf = torch.cumsum(lq.double().exp(), dim=-1)
            u = uniforms[start + row:start + row + len(lp)].to(cdf.device) * cdf[:, -1:]
            drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
            ids.append(drawn.cpu())
            log_w.append((lp.gather(1, drawn) - lq.gather(1, drawn)).cpu())
    if not ids:
        return torch.zeros(0, uniforms.shape[-1], dtype=torch.long), torch.zeros(0, uniforms.shape[-1])
    return torch.cat(ids), torch.cat(log_w)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: str | Path) -> str | None:
    """The base model of a PEFT adapter directory (``adapter_config.json``), or None for a full model."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config}: no base_model_name_or_path: cannot tell which model the adapter belongs to")
    return base


def load_causal_lm(path: str | Path, device: str | None = None, dtype: str = "auto"):
    """A causal LM from a directory or hub id, in eval mode on ``device`` (default: cuda if available).

    ``dtype="auto"``: bfloat16 on a GPU that supports it, else float32. A PEFT (LoRA) adapter
    directory loads on its base model (``base_model_name_or_path``) and is merged into it, so
    generation and scoring run at the base model's speed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    base = adapter_base(path)
    model = AutoModelForCausalLM.from_pretrained(str(base or path), dtype=getattr(torch, dtype))
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model.to(device).eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a model; an adapter directory saved without one uses its base model's."""
    from transformers import AutoTokenizer

    base = adapter_base(path) if Path(path).is_dir() else None
    if base is not None and not (Path(path) / "tokenizer_config.json").is_file():
        path = base
    return AutoTokenizer.from_pretrained(str(path))


class HFBackend(Backend):
    """A transformers causal LM, from a path/hub id (``load_causal_lm``: adapters too) or a loaded model.

    ``batch_size`` prompts (× ``n`` samples) go through one ``generate`` call; ``chunk_positions``
    rows of hidden states go through the LM head at once in ``prompt_topk``.
    """

    name = "hf"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 8, chunk_positions: int = 1024,
                 device: str | None = None, dtype: str = "auto", chat_template: str | None = None):
        name = str(model) if isinstance(model, (str, Path)) else str(getattr(model, "name_or_path", "") or "")
        if isinstance(model, (str, Path)):
            model = load_causal_lm(model, device, dtype)
        self.model = model.eval()
        self.model_name = name
        self._tokenizer, self.chat_template = tokenizer, chat_template
        self.batch_size, self.chunk_positions = batch_size, chunk_positions

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        """The given tokenizer, else the model directory's (loaded on first use: top-k capture needs none)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name)
        if self.chat_template:
            self._tokenizer.chat_template = self.chat_template
        return self._tokenizer

    def stop_ids(self) -> list[int]:
        return stop_ids(self.tokenizer, self.model)

    def encode(self, prompt: Prompt) -> tuple[list[int], str | None]:
        """Token ids of a prompt (ids pass through) and, for chat prompts, the rendered text."""
        if is_token_ids(prompt):
            return list(prompt), None
        text = render_chat(self.tokenizer, prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], text

    def generate(self, prompts: Iterable[Prompt], sampling: SamplingParams, on_done: OnDone,
                 on_error: OnError | None = None) -> None:
        prompts, start = iter(prompts), 0
        while chunk := list(itertools.islice(prompts, self.batch_size)):
            for j, completions in enumerate(self._generate(chunk, sampling)):
                on_done(start + j, completions)
            start += len(chunk)

    def _generate(self, chunk: list[Prompt], s: SamplingParams) -> list[list[Completion]]:
        import torch

        encoded = [self.encode(p) for p in chunk]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (ids, _) in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[b, width - len(ids):] = torch.tensor(ids)
            attention[b, width - len(ids):] = 1
        if s.seed is not None:
            torch.manual_seed(s.seed)
        sample = s.temperature > 0
        stops = self.stop_ids()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                do_sample=sample, temperature=s.temperature if sample else None,
                top_p=s.top_p if sample else None, top_k=0 if sample else None,
                max_new_tokens=s.max_tokens, num_return_sequences=s.n, pad_token_id=pad, eos_token_id=stops,
                return_dict_in_generate=True, output_logits=s.logprobs)
        new = out.sequences[:, width:]
        step_logprobs = None
        if s.logprobs:  # raw logits of each step -> log-prob of the token sampled there
            logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            step_logprobs = logp.gather(-1, new[:, :logp.shape[1], None]).squeeze(-1).tolist()
        results = []
        for i, (ids, text) in enumerate(encoded):
            completions = []
            for row in range(i * s.n, (i + 1) * s.n):
                gen = new[row].tolist()
                stop = next((p for p, t in enumerate(gen) if t in stops), None)
                kept = gen if stop is None else gen[:stop + 1]
                completions.append(Completion(
                    text=self.tokenizer.decode(kept if stop is None else kept[:-1], skip_special_tokens=False),
                    token_ids=kept, finish_reason="length" if stop is None else "stop",
                    prompt_tokens=len(ids), completion_tokens=len(kept),
                    logprobs=None if step_logprobs is None else step_logprobs[row][:len(kept)],
                    prompt_text=text))
            results.append(completions)
        return results

    def prompt_topk(self, sequences: Sequence[list[int]], masks: Sequence[np.ndarray], k: int,
                    temperature: float = 1.0, vocab_size: int | None = None) -> list[TopK]:
        """Batched forward to the final hidden states; only masked positions go through the LM head
        (``modeling.output_head``: the weight, bias and soft-cap the training loss uses)."""
        return self._score(sequences, masks, lambda rows, head: topk_of_head(
            rows, head, k, temperature, self.chunk_positions, vocab_size))

    def prompt_sample(self, sequences: Sequence[list[int]], masks: Sequence[np.ndarray], uniforms: Sequence[np.ndarray],
                      temperature: float = 1.0, proposal_temperature: float = 1.0,
                      vocab_size: int | None = None) -> list[TopK]:
        """``Backend.prompt_sample`` by ``samples_of_head`` on the masked positions' hidden states."""
        stacked = np.concatenate([np.asarray(u, dtype=np.float64) for u in uniforms])
        return self._score(sequences, masks, lambda rows, head: samples_of_head(
            rows, head, stacked, temperature, proposal_temperature, self.chunk_positions, vocab_size))

    def _score(self, sequences, masks, of_rows) -> list[TopK]:
        """``of_rows(hidden rows of every masked position, head)`` (right-padded batch), split per sequence."""
        import torch

        from distill_plugin.modeling import final_hidden_states, output_head

        head = output_head(self.model)
        device = head.weight.device
        width = max(len(ids) for ids in sequences)
        input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
        attention = torch.zeros(len(sequences), width, dtype=torch.long)
        select = torch.zeros(len(sequences), width, dtype=torch.bool)
        for b, (ids, mask) in enumerate(zip(sequences, masks)):  # right padding keeps position ids
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
            select[b, : len(mask)] = torch.from_numpy(np.asarray(mask, dtype=bool))
        with torch.inference_mode():
            hidden = final_hidden_states(self.model, {"input_ids": input_ids.to(device),
                                                      "attention_mask": attention.to(device)})
            ids, vals = of_rows(hidden[select.to(device)], head)
        out, start = [], 0
        for mask in masks:
            n = int(np.count_nonzero(mask))
            out.append((ids[start:start + n].numpy(), vals[start:start + n].numpy()))
            start += n
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name}
