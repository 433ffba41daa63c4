"""The generation layer's shared types: sampling settings, prompts, completions, the backend interface.

One interface for every engine (``hf`` transformers, ``vllm``, ``openai`` HTTP), used by
data_prep's trajectory generation, by the offline top-k capture and, later, by on-policy
distillation (sample from the student, score with the teacher):

* ``Backend.generate(prompts, sampling, on_done, on_error=None)`` samples ``sampling.n`` completions per prompt.
  A prompt is either chat messages (the engine's chat template renders them; a final
  ``assistant`` message is a *prefill* the completion continues) or a list of token ids (used as is).
  ``on_done(i, completions)`` is called once per prompt, when all its ``n`` completions are done,
  in any order.
* ``Backend.prompt_topk(sequences, masks, k, temperature)`` scores given token ids: for each
  position t with ``mask[t]`` the top-k of ``log_softmax(logits_t / T)`` — the distribution at t
  predicts token t+1 (the shift convention of the losses). Engines that cannot do it raise
  ``NotImplementedError``; ``Backend.prompt_sample`` draws ids from the same positions' full
  distributions instead (the sampled offline store).

``Completion.logprobs`` (when ``sampling.logprobs``) holds, for each generated token, its natural-log
probability under the model's unprocessed distribution (T = 1, before top-p), as vLLM reports by
default; ``None`` where the engine does not return them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Chat messages ([{"role": ..., "content": ...}, ...]) or token ids.
Prompt = list[dict] | list[int]


class SamplingParams(BaseModel):
    """Sampling settings of one ``generate`` call (temperature 0 = greedy)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(4, ge=1, description="completions per prompt")
    temperature: float = Field(0.6, ge=0.0, description="DeepSeek-R1 recommends 0.6")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling; R1 recommends 0.95")
    max_tokens: int = Field(16384, ge=1, description="new tokens per completion at most")
    seed: int | None = Field(None, description="seed of the sampler (reproducible runs)")
    logprobs: bool = Field(False, description="also return each generated token's log-prob")


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    text: str  # the generated text only (a prefill is not repeated here)
    token_ids: list[int] | None  # generated ids, the stop token included when one ended it
    finish_reason: str | None  # "stop" | "length" | ... as the engine reports it
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: list[float] | None = None  # per generated token, see the module docstring
    reasoning: str | None = None  # reasoning a server returned apart (``reasoning_content``)
    prompt_text: str | None = None  # the rendered prompt, prefill included (local engines only)

    def as_dict(self) -> dict:
        return asdict(self)


OnDone = Callable[[int, list[Completion]], None]
TopK = tuple[np.ndarray, np.ndarray]  # ([positions, k] int64 ids, [positions, k] float32 log-probs)


class GenerationError(RuntimeError):
    """A prompt failed for good (a non-retryable status, retries exhausted, a malformed response).

    ``status``: the HTTP status, or a word for what failed (``"timeout"``-like exception names,
    ``"unparsable"``); the message names the URL and carries the server's own message.
    """

    def __init__(self, message: str, status: int | str | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(GenerationError):
    """No connection to the server at all (refused, no route, unknown host) after the retries: not
    one prompt's failure but the run's, so it stops the run instead of being recorded per prompt."""


OnError = Callable[[int, GenerationError], None]


def stop_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's EOS and the model's generation-config EOS ids (chat models stop on either)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return sorted(i for i in ids if i is not None)


def is_token_ids(prompt: Prompt) -> bool:
    return len(prompt) > 0 and all(isinstance(t, int) for t in prompt)


def split_prefill(messages: list[dict]) -> tuple[list[dict], str | None]:
    """Chat messages -> (the conversation, the assistant prefill or None): a final assistant
    message is continued by the completion, not answered."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content") or "")
    return messages, None


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's chat template with the generation prompt, then the prefill (if any).

    A prefill the template already wrote at the end (R1-Distill templates open ``<think>\\n``
    themselves) is not written twice.
    """
    head, prefill = split_prefill(messages)
    text = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    if prefill and not text.endswith(prefill):
        text += prefill
    return text


class Backend:
    """Interface of a generation engine; see the module docstring."""

    name = "base"

    def generate(self, prompts: Iterable[Prompt], sampling: SamplingParams, on_done: OnDone,
                 on_error: OnError | None = None) -> None:
        """Sample every prompt; ``on_error(i, error)``, where given and where the engine can isolate
        one prompt's failure (HTTP), reports it and goes on; otherwise the error is raised."""
        raise NotImplementedError

    def prompt_topk(self, sequences: Sequence[list[int]], masks: Sequence[np.ndarray], k: int,
                    temperature: float = 1.0, vocab_size: int | None = None) -> list[TopK]:
        """``vocab_size``: ids at or above it (a checkpoint's lm_head padding rows) are never returned."""
        raise NotImplementedError(f"the {self.name} backend cannot score prompt positions (top-k capture)")

    def prompt_sample(self, sequences: Sequence[list[int]], masks: Sequence[np.ndarray], uniforms: Sequence[np.ndarray],
                      temperature: float = 1.0, proposal_temperature: float = 1.0,
                      vocab_size: int | None = None) -> list[TopK]:
        """Draws from each masked position's full distribution (the sampled offline store): with
        ``p = softmax(logits_t / temperature)`` and the proposal ``q ∝ p^(1/proposal_temperature)``,
        ``uniforms[b]`` ``[positions, S]`` map through q's inverse CDF to ``S`` ids per position.
        Returns, per sequence, the ``[positions, S]`` ids and their ``log p − log q``."""
        raise NotImplementedError(f"the {self.name} backend cannot draw from prompt positions' full distributions "
                                  "(sampled capture needs the hf backend)")

    def describe(self) -> dict:
        """What to record next to the outputs (never a secret)."""
        return {"backend": self.name}

    def close(self) -> None:
        pass
