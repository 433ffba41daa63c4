"""One generation layer for every engine: ``hf`` (transformers), ``vllm``, ``openai`` (HTTP).

Used by data_prep's trajectory generation (``distill-data generate``), the offline top-k capture
(``distill-data logits``) and, later, on-policy distillation. See ``base`` for the interface.
"""

from __future__ import annotations

from .base import (Backend, Completion, GenerationError, OnDone, OnError, Prompt, SamplingParams, ServerUnreachable, TopK,
                   render_chat, split_prefill)
from .hf import ADAPTER_CONFIG, adapter_base, load_causal_lm, load_tokenizer  # numpy only at import

BACKENDS = ("hf", "openai", "vllm")

__all__ = ["ADAPTER_CONFIG", "BACKENDS", "Backend", "Completion", "GenerationError", "OnDone", "OnError", "Prompt", "SamplingParams", "ServerUnreachable", "TopK",
           "adapter_base", "backend_class", "load_causal_lm", "load_tokenizer", "make_backend", "render_chat", "split_prefill"]


def backend_class(kind: str) -> type[Backend]:
    """The engine class a backend name stands for (imported on demand: vllm is optional)."""
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend
    if kind in ("openai", "http"):
        from .openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend
    if kind == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend
    raise ValueError(f"unknown backend {kind!r} ({' | '.join(BACKENDS)})")


def make_backend(kind: str, model, **options) -> Backend:
    """A backend by name; ``options`` are the engine's own (``HFBackend``, ``VLLMBackend``,
    ``OpenAIHTTPBackend`` keyword arguments)."""
    return backend_class(kind)(model, **options)
