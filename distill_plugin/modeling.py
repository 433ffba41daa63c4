"""Model plumbing: find the causal LM and its lm_head through wrappers, capture final hidden states,
and run the fused loss *inside* the engine's own calls.

The fused losses need the *final hidden states* (the lm_head's input) and the lm_head weight, never
the [batch, seq, vocab] logits. ``final_hidden_states`` runs the model's own forward — so DDP hooks,
PEFT adapters, gradient checkpointing and Axolotl's patches all apply — with the lm_head module
temporarily replaced (in its parent) by a pass-through that records its input; the model's
"logits" output is then the hidden states themselves and costs nothing, and no engine hook runs
for an lm_head call that does no work.

Two redirections put the loss where the engine has gathered the weight:

``inside_forward``  calls the outermost wrapper (DDP, a DeepSpeed engine, an FSDP2 module or the
                    model itself) so that the wrapper's forward machinery — hooks, FSDP2's
                    all-gather of the root's parameters, input casting — surrounds a function of
                    ours that does the student forward *and* the loss (TRL redirects the same way).
``through_head``    calls the lm_head module that owns the weight on the supervised rows, with its
                    forward replaced by the loss. Engines that gather per module (ZeRO-3 fetches a
                    module's parameters in its pre-forward hook; FSDP2 when lm_head is its own
                    unit) have the full weight there, and the loss is that call's output, so the
                    engine's backward hooks on the output re-gather the weight and its gradient is
                    reduce-scattered into the shard by the engine itself. Reading ``lm_head.weight``
                    anywhere else gives a DTensor shard (FSDP2) or an empty placeholder (ZeRO-3).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .signals import NON_MODEL_KEYS, OutputHead

# Attention implementations that keep packed documents apart in Axolotl 0.19: varlen kernels read
# position_ids; with sdpa/eager Axolotl drops the attention mask and transformers builds a
# block-diagonal one from position_ids (``attn_decontaminates_packing`` in Axolotl's config).
PACKING_SAFE = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


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


def _head_modules(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(causal LM, its output-embeddings module, the module that owns the weight) through DDP and PEFT."""
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
    return causal_lm, head, base


def output_head(model: nn.Module) -> OutputHead:
    """The lm_head of ``model`` (found through DDP and PEFT), with its optional logit soft-cap.

    Under a parameter-sharding engine the weight read here is whole only inside ``through_head``.
    """
    causal_lm, head, base = _head_modules(model)
    config = getattr(causal_lm, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text_config, "final_logit_softcapping", None)
    return OutputHead(base.weight, getattr(base, "bias", None), cap, head)


class _PassThrough(nn.Module):
    """Stands in for the lm_head during a forward: records its input and returns it unchanged."""

    def __init__(self):
        super().__init__()
        self.hidden = None

    def forward(self, hidden, *args, **kwargs):
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


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, sub in module.named_children():
            if sub is child:
                return module, name
    raise ValueError(f"{type(child).__name__} is not a submodule of {type(root).__name__}")


@contextmanager
def lm_head_bypassed(model: nn.Module):
    """Within the block, ``model(...)`` skips the lm_head (the module, with any engine hooks on it,
    is swapped out of its parent); yields the capture object."""
    causal_lm, head, _ = _head_modules(model)
    parent, name = _parent_of(causal_lm, head)
    capture = _PassThrough()
    parent._modules[name] = capture  # not setattr: no parameter bookkeeping for a placeholder
    try:
        yield capture
    finally:
        parent._modules[name] = head


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


def through_head(model: nn.Module, fn: Callable, rows: torch.Tensor):
    """``fn(head, rows)`` computed as the forward of the module owning the lm_head weight, called on
    ``rows``; returns ``(objective, extra)`` where ``fn`` returned them.

    ``head`` (an ``OutputHead``) is read inside that call, where a per-module engine has gathered the
    weight. Only ``objective`` (a tensor) leaves the module: it is the call's output, so the engine's
    output hooks see it and its backward re-gathers the weight and reduces the gradient into the
    shard; ``extra`` (detached values) is handed back beside it.
    """
    *_, owner = _head_modules(model)
    side = {}
    swap = None

    def loss_as_forward(hidden, *args, **kwargs):
        swap.restore()
        objective, side["extra"] = fn(output_head(model), hidden)
        return objective

    swap = _ForwardSwap(owner, loss_as_forward)
    try:
        objective = owner(rows)
    finally:
        swap.restore()
    return objective, side["extra"]


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


def keep_4bit_layers_trainable_on_cpu(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repacking on ``model``'s 4-bit linears; returns how many.

    bitsandbytes (0.50) repacks a ``Linear4bit``'s weight for its AVX512-BF16 CPU kernel on the first
    forward in eval mode without gradient, and keeps that layout: the next training forward then takes
    the inference-only kernel and stops with "a view of a leaf Variable that requires grad is being used
    in an in-place operation". An evaluation during training (``eval_steps``) is such a forward. Only
    CPUs with AVX512-BF16 are affected; a frozen teacher keeps the repacking (it never trains)."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
