"""Capture the supervised rows of chosen hidden states with forward pre-hooks on decoder layers.

Hidden state h < L (see ``layer_map``) is the input of decoder layer h, so a pre-hook on that layer
sees it; h = L is the lm_head's input, which ``modeling.final_hidden_states`` already records. Only
the mapped layers get a hook, and each hook keeps only the supervised rows ``hidden[:, :-1][mask]``
(the shift and mask of the logit loss), never the whole [B, T, H] of every layer as
``output_hidden_states=True`` would.

A pre-hook (not a post-hook on layer h-1) because under gradient checkpointing a layer's own
forward runs inside the checkpoint function, where a reentrant checkpoint disables autograd: its
*input* is the tensor of the outer graph, its output inside the function is not.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..modeling import final_hidden_states, unwrap_causal_lm


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a causal LM (through DDP and PEFT wrappers)."""
    causal_lm = unwrap_causal_lm(model)
    config = causal_lm.config.get_text_config() if hasattr(causal_lm.config, "get_text_config") else causal_lm.config
    depth = config.num_hidden_layers
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) == depth:
        return layers
    for module in causal_lm.modules():  # other layouts: the first module list of the right length
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"{type(causal_lm).__name__}: no list of {depth} decoder layers found for hidden-state KD")


def depth_and_width(model: nn.Module) -> tuple[int, int]:
    """(number of decoder layers, hidden size) of a causal LM."""
    config = unwrap_causal_lm(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return config.num_hidden_layers, config.hidden_size


@contextmanager
def captured_rows(model: nn.Module, indices, mask: torch.Tensor):
    """Within the block, forwards of ``model`` store ``{h: hidden_h[:, :-1][mask]}`` for h in ``indices``
    (each < L) into the yielded dict."""
    layers, store, handles = decoder_layers(model), {}, []

    def hook_for(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            store[index] = hidden[:, :-1][mask]

        return hook

    try:
        for index in indices:
            handles.append(layers[index].register_forward_pre_hook(hook_for(index), with_kwargs=True))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def hidden_rows(model: nn.Module, inputs: dict, mask: torch.Tensor, indices, forward=None):
    """One forward: (final hidden rows [N, H], {h: rows [N, H]} for every h in ``indices``).

    ``indices`` may include L (the final hidden state, taken from the lm_head's input).
    """
    depth = len(decoder_layers(model))
    with captured_rows(model, [h for h in indices if h < depth], mask) as store:
        final = final_hidden_states(model, inputs, forward=forward)[:, :-1][mask]
    if depth in indices:
        store[depth] = final
    return final, store
