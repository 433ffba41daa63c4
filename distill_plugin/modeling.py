"""Model plumbing: find the causal LM and its lm_head through wrappers, capture final hidden states.

The fused losses need the *final hidden states* (the lm_head's input) and the lm_head weight, never
the [batch, seq, vocab] logits. ``final_hidden_states`` runs the model's own forward — so DDP hooks,
PEFT adapters, gradient checkpointing and Axolotl's patches all apply — with the lm_head temporarily
replaced by a pass-through that records its input; the model's "logits" output is then the hidden
states themselves and costs nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

# Batch keys that are ours, not the model's.
NON_MODEL_KEYS = ("labels", "num_items_in_batch", "teacher_topk_ids", "teacher_topk_logprobs")


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """Strip DDP/FSDP-style ``.module`` wrappers and PEFT wrappers; return the *ForCausalLM."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


@dataclass
class OutputHead:
    """What the loss needs of a model's output layer."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None
    module: nn.Module


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


@contextmanager
def lm_head_bypassed(model: nn.Module):
    """Within the block, ``model(...)`` skips the lm_head matmul; yields the capture object."""
    head = output_head(model).module
    capture = _PassThrough()
    had_instance_forward = "forward" in head.__dict__
    previous = head.__dict__.get("forward")
    head.forward = capture
    try:
        yield capture
    finally:
        if had_instance_forward:
            head.forward = previous
        else:
            del head.forward


def final_hidden_states(model: nn.Module, inputs: dict) -> torch.Tensor:
    """[B, T, H] hidden states that the lm_head would see, for the model inputs in ``inputs``."""
    model_inputs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS and v is not None}
    model_inputs.setdefault("use_cache", False)
    with lm_head_bypassed(model) as capture:
        model(**model_inputs)
    if capture.hidden is None:
        raise RuntimeError(f"{type(unwrap_causal_lm(model)).__name__}.forward never called its lm_head")
    return capture.hidden
