"""Capture the supervised rows of chosen hidden states at the inputs of the mapped decoder layers.

Hidden state h < L (see ``layer_map``) is the input of decoder layer h; h = L is the lm_head's
input, which ``modeling.final_hidden_states`` already records. For the forward, only the mapped
layers are wrapped in a recorder that keeps the supervised rows ``hidden[:, :-1][mask]`` (the shift
and mask of the logit loss) and calls the layer — never the whole [B, T, H] of every layer as
``output_hidden_states=True`` would keep.

Why a wrapper in the layer list rather than a forward (pre-)hook: module hooks run inside the
layer's ``__call__``, which gradient checkpointing (``GradientCheckpointingLayer``) runs inside the
checkpoint function — autograd is off there (reentrant) or the recorded ops break the recompute
(non-reentrant). The wrapper sees the layer input exactly as the model's loop passes it.
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


class _Recorder(nn.Module):
    """Stands in for a decoder layer during one forward: records its input's rows, then calls it."""

    def __init__(self, layer: nn.Module, record):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule: parameter names stay as they are
        object.__setattr__(self, "record", record)

    def forward(self, *args, **kwargs):
        self.record(args[0] if args else kwargs["hidden_states"])
        return self.layer(*args, **kwargs)

    def __getattr__(self, name):  # the model's loop may read layer attributes (attention_type, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)


@contextmanager
def captured_rows(model: nn.Module, indices, mask: torch.Tensor):
    """Within the block, forwards of ``model`` store ``{h: hidden_h[:, :-1][mask]}`` for h in ``indices``
    (each < L) into the yielded dict."""
    layers, store, originals = decoder_layers(model), {}, {}

    def recorder(index):
        def record(hidden):
            store[index] = hidden[:, :-1][mask]

        return record

    try:
        for index in indices:
            originals[index] = layers[index]
            layers[index] = _Recorder(layers[index], recorder(index))
        yield store
    finally:
        for index, layer in originals.items():
            layers[index] = layer


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
