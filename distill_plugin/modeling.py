"""Model plumbing: find the causal LM and its lm_head through wrappers, capture final hidden states,
and run a function *inside* a wrapped model's forward.

The fused losses need the *final hidden states* (the lm_head's input) and the lm_head weight, never
the [batch, seq, vocab] logits. ``final_hidden_states`` runs the model's own forward — so DDP hooks,
PEFT adapters, gradient checkpointing and Axolotl's patches all apply — with the lm_head temporarily
replaced by a pass-through that records its input; the model's "logits" output is then the hidden
states themselves and costs nothing.

``inside_forward`` is a forward redirection (TRL does the same for its fused losses): it calls the
outermost wrapper (DDP, FSDP, a DeepSpeed engine, or the model itself) so that the wrapper's
forward machinery — hooks, parameter gathering — runs around a function of ours that does the
student forward *and* the loss, while the lm_head is still gathered.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .signals import NON_MODEL_KEYS, OutputHead


def unwrap_distributed(model: nn.Module) -> nn.Module:
    """Strip DDP/FSDP/DeepSpeed-style ``.module`` wrappers (PEFT wrappers stay)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """Strip ``.module`` wrappers and PEFT wrappers; return the *ForCausalLM."""
    model = unwrap_distributed(model)
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def output_head(model: nn.Module) -> OutputHead:
    """The lm_head of ``model`` (found through DDP and PEFT), with its optional logit soft-cap."""
    causal_lm = unwrap_causal_lm(model)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(causal_lm).__name__} has no output embeddings (lm_head)")
    if hasattr(head, "lora_A") and len(getattr(head, "lora_A", {})) > 0:
        raise ValueError(
            "LoRA adapters on lm_head are not supported by the fused KD loss: remove `lm_head` from "
            "`lora_target_modules` (use `lora_modules_to_save: [lm_head]` to train it fully instead)"
        )
    base = head.get_base_layer() if hasattr(head, "get_base_layer") else head
    if hasattr(base, "modules_to_save"):  # PEFT ModulesToSaveWrapper
        base = base.modules_to_save[base.active_adapter] if base.active_adapter in base.modules_to_save else base.original_module
    config = getattr(causal_lm, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text_config, "final_logit_softcapping", None)
    return OutputHead(base.weight, getattr(base, "bias", None), cap, head)


class _PassThrough:
    """Stands in for lm_head.forward: records its input and returns it unchanged."""

    def __init__(self):
        self.hidden = None

    def __call__(self, hidden, *args, **kwargs):
        self.hidden = hidden
        return hidden


class _ForwardSwap:
    """Replace ``module.forward`` by an instance attribute; ``restore`` puts back exactly what was
    there (an instance-level wrapper such as Accelerate's autocast, or the class method)."""

    def __init__(self, module: nn.Module, replacement: Callable):
        self.module, self.saved = module, module.__dict__.get("forward")
        module.forward = replacement

    def restore(self) -> None:
        if self.saved is not None:
            self.module.forward = self.saved
        else:
            self.module.__dict__.pop("forward", None)


@contextmanager
def lm_head_bypassed(model: nn.Module):
    """Within the block, ``model(...)`` skips the lm_head matmul; yields the capture object."""
    capture = _PassThrough()
    swap = _ForwardSwap(output_head(model).module, capture)
    try:
        yield capture
    finally:
        swap.restore()


def model_inputs(inputs: dict) -> dict:
    """The batch entries that go to ``model.forward`` (ours, e.g. labels, are left out)."""
    kept = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS and v is not None}
    kept.setdefault("use_cache", False)
    return kept


def final_hidden_states(model: nn.Module, inputs: dict, forward: Callable | None = None) -> torch.Tensor:
    """[B, T, H] hidden states that the lm_head would see, for the model inputs in ``inputs``.

    ``forward``: what to call instead of ``model`` itself (``inside_forward`` passes the model's
    own forward so its wrapper's hooks are not run twice).
    """
    with lm_head_bypassed(model) as capture:
        (forward or model)(**model_inputs(inputs))
    if capture.hidden is None:
        raise RuntimeError(f"{type(unwrap_causal_lm(model)).__name__}.forward never called its lm_head")
    return capture.hidden


def inside_forward(model: nn.Module, fn: Callable, **kwargs):
    """``fn(forward, **kwargs)`` run from inside ``model(**kwargs)``; returns what ``fn`` returns.

    ``model`` is the outermost module (a DDP/FSDP/DeepSpeed wrapper, or the model). Its innermost
    ``.module`` gets a one-shot ``forward`` that restores the real one and calls ``fn`` with it, so
    everything the wrappers do around forward (pre/post hooks, parameter gathering, input casting)
    surrounds ``fn``: the student forward and the fused loss that reads the lm_head weight.
    """
    inner = unwrap_distributed(model)
    forward = inner.forward  # bound method, or an instance-level wrapper (Accelerate autocast)
    swap = None

    def redirected(*args, **call_kwargs):
        swap.restore()
        return fn(forward, *args, **call_kwargs)

    swap = _ForwardSwap(inner, redirected)
    try:
        return model(**kwargs)
    finally:
        swap.restore()
