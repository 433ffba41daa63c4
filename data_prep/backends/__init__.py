"""Generation backends: ``hf`` (transformers), ``openai`` (any OpenAI-compatible HTTP server), ``vllm``."""

from __future__ import annotations

from .base import R1_SUFFIX, Backend, Generation, PromptStyle, Sampling

__all__ = ["Backend", "Generation", "PromptStyle", "Sampling", "R1_SUFFIX", "make_backend"]


def make_backend(kind: str, model: str, sampling: Sampling, style: PromptStyle, **opts) -> Backend:
    """Build a backend by name (``hf``, ``openai``, ``vllm``); ``opts`` are backend-specific."""
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(model, sampling, style, **opts)
    if kind in ("openai", "http"):
        from .openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(model, sampling, style, **opts)
    if kind == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(model, sampling, style, **opts)
    raise ValueError(f"unknown backend {kind!r} (hf | openai | vllm)")
