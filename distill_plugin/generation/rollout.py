"""Sampling from a model that is being trained (on-policy distillation), through the generation layer.

``Rollout.sample(model, prompts)`` returns one completion (token ids, cut after the first stop
token) per token-id prompt. Around the engine call, ``generation_mode`` puts the model in the state
sampling needs and gives it back as it was:

* eval mode (dropout off) and inference mode (``decode.sample_tokens`` samples under it);
* the KV cache on: Axolotl/TRL set ``config.use_cache = False`` for training, which would make
  every new token recompute the whole prefix;
* gradient checkpointing is not toggled: transformers applies it only in training mode, so eval
  mode already bypasses it, and the model's checkpointing setup (function, kwargs) stays exactly
  as the trainer configured it — ``model.train()`` afterwards re-activates it;
* LoRA adapters stay active: the PEFT model itself generates (its adapters are the student).

Engines: ``hf`` (``decode.sample_tokens`` on the training model itself, on its device: batched,
KV-cached, finished rows dropped) and ``vllm`` (a colocated ``VLLMBackend`` created on first use;
before each call the student's weights — LoRA merged in — are loaded into the engine, so it samples
the current student). vLLM is optional.
Sampling draws from the global torch RNG, which the Trainer seeds and saves with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .base import SamplingParams, stop_ids
from .decode import sample_tokens


@contextmanager
def generation_mode(model: torch.nn.Module):
    """Eval mode and the KV cache on inside the block; training mode and ``use_cache`` restored after."""
    was_training = model.training
    configs = [m.config for m in model.modules() if getattr(getattr(m, "config", None), "use_cache", None) is not None]
    saved = [c.use_cache for c in configs]
    model.eval()
    for config in configs:
        config.use_cache = True
    try:
        yield model
    finally:
        for config, value in zip(configs, saved):
            config.use_cache = value
        model.train(was_training)


class Rollout:
    """One completion per prompt from ``model``, with the ``hf`` or ``vllm`` engine."""

    def __init__(self, tokenizer, sampling: SamplingParams, backend: str = "hf", vllm_options: dict | None = None):
        if sampling.n != 1:
            raise ValueError("on-policy rollouts sample one completion per prompt (n = 1)")
        self.tokenizer, self.sampling, self.backend = tokenizer, sampling, backend
        self.vllm_options = vllm_options or {}
        self._vllm = None

    def sample(self, model: torch.nn.Module, prompts: Sequence[list[int]]) -> list[list[int]]:
        """Token ids of one sampled completion per prompt (the first stop token included, nothing after)."""
        if not prompts:
            return []
        if self.backend == "vllm":
            return self._sample_vllm(model, prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with generation_mode(model):
            return sample_tokens(model, prompts, self.sampling, stop_ids(self.tokenizer, model), pad)

    def _sample_vllm(self, model, prompts):
        from ..modeling import unwrap_distributed
        from .vllm import VLLMBackend

        model = unwrap_distributed(model)
        if self._vllm is None:
            path = getattr(model, "name_or_path", None) or model.config.name_or_path
            # colocated with training: leave most of the GPU to the student, its optimizer and the teacher
            self._vllm = VLLMBackend(path, **{"gpu_memory_utilization": 0.3, **self.vllm_options})
        load_weights_into_vllm(self._vllm.llm, model)
        out: list[list[int] | None] = [None] * len(prompts)

        def done(i, completions):
            out[i] = completions[0].token_ids

        self._vllm.generate([list(p) for p in prompts], self.sampling, done)
        return out


def merged_state_dict(model: torch.nn.Module):
    """(name, tensor) pairs of the student's current weights in the base checkpoint's names,
    LoRA adapters merged in (``merge_adapter``/``unmerge_adapter`` around the read)."""
    peft = hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")
    if peft:
        model.merge_adapter()
    try:
        base = model.get_base_model() if peft else model
        for name, tensor in base.state_dict().items():
            if "lora_" in name or ".original_module." in name:  # adapters are merged; saved modules replace originals
                continue
            name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
            yield name, tensor.detach()
    finally:
        if peft:
            model.unmerge_adapter()


def load_weights_into_vllm(llm, model: torch.nn.Module) -> None:
    """Copy the student's weights into the colocated engine's model (vLLM ``load_weights``)."""
    engine_model = None
    for path in ("llm_engine.model_executor.driver_worker.model_runner.model",  # V0
                 "llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V0 wrapper, V1 external launcher
                 # V1 with VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core runs in this process
                 "llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model"):
        engine_model = llm
        try:
            for attr in path.split("."):
                engine_model = getattr(engine_model, attr)
            break
        except AttributeError:
            engine_model = None
    if engine_model is not None:
        engine_model.load_weights(merged_state_dict(model))
        return
    # vLLM V1 runs the model in a worker process: collective_rpc calls a function there with the
    # weights (pickled through the engine's message queue: a copy per step, fine for small students).
    weights = [(n, t.cpu()) for n, t in merged_state_dict(model)]
    llm.collective_rpc(_load_in_worker, args=(weights,))


def _load_in_worker(worker, weights):  # pragma: no cover - runs inside a vLLM worker (GPU only)
    worker.model_runner.model.load_weights(weights)
