"""Attention transfer: ``distill.attention_weight`` > 0, the student's attention distributions matched
to the teacher's at mapped decoder layers (``losses.attention``: the formula, rows, heads).

Layers: ``attention_layers`` in the syntax of ``hidden_layers`` (``hidden.layer_map``), over decoder
layers: ``uniform:N`` / ``last:N`` pair the layers whose outputs are the hidden states that map pairs
(hidden state h is decoder layer h−1's output, so ``uniform:N`` ends at both last layers); explicit
``[[student, teacher], ...]`` are decoder-layer indices, 0 = the first layer.

Capture. Only ``attn_implementation: eager`` forms the probabilities (flash attention never does;
sdpa returns none, and capturing them means computing them eagerly anyway), so any other
implementation is refused, for the student and for the teacher. A forward hook on each mapped
layer's attention module keeps a reference to the [B, H, T, T] probabilities it returns; no other
layer's is kept. The student's are the very tensors eager attention saves for its own backward (no
copy); the loss selects their supervised query rows. The teacher's come from the forward that the
online ``teacher``'s source runs on each batch (``methods.online``, listed before this method);
this method's source takes them from its hooks right after and keeps the supervised rows only. The
teacher's hook averages each map's heads in groups to the student's count at once (the loss's own
mean, taken earlier), so a mapped teacher layer costs B·H_s·T² until its rows are kept.

Gradient checkpointing: non-reentrant only (reentrant runs the layers without autograd in the
forward, so the captured probabilities would carry no gradient). A hook does nothing while autograd
recomputes a checkpointed layer in the backward.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ..errors import SetupError
from ..hidden.layer_map import LayerSpec, as_field, check_spec, resolve
from .base import FieldsBase, Method, Setup

KEY = "attention_layers"
# Axolotl's deprecated boolean attention flags, all naming an implementation other than eager.
NOT_EAGER_FLAGS = ("flash_attention", "sdp_attention", "flex_attention", "xformers_attention", "sage_attention",
                   "s2_attention")
EAGER_HINT = "set `attn_implementation: eager` (the only implementation that forms the probabilities)"


class AttentionFields(FieldsBase):
    attention_weight: float = Field(
        0.0, ge=0.0, description="Weight of the attention-transfer component `attention` (KL(teacher ‖ student) of the mapped layers' attention distributions); 0 = off. Needs `attn_implementation: eager`."
    )
    attention_layers: LayerSpec = Field(
        "last:1", description="Attention layer map, `hidden_layers` syntax over decoder layers: `uniform:N`, `last:N` or `[[student, teacher], ...]` (0 = first layer)."
    )

    @model_validator(mode="after")
    def _check_attention(self):
        try:
            self.attention_layers = as_field(check_spec(self.attention_layers, KEY))
        except ValueError as error:
            raise ValueError(str(error)) from None
        self.refuse_unless([KEY], self.attention_weight > 0, "without `attention_weight` > 0")
        if self.attention_weight and getattr(self, "teacher", None) is None:
            raise ValueError("distill: `attention_weight` > 0 needs the online `teacher` for its attention maps; with "
                             "offline `teacher_logits` set both (the logits then come from the store, the maps from `teacher`)")
        if self.attention_weight and getattr(self, "cross_tokenizer", "off") != "off":
            raise ValueError("distill.attention_weight: the teacher's attention runs over its own tokens with "
                             "`cross_tokenizer`, not the student's positions; remove one of them")
        return self


def attention_pairs(spec, student_depth: int, teacher_depth: int) -> tuple[tuple[int, int], ...]:
    """Decoder-layer pairs (student, teacher) of an ``attention_layers`` spec (module docstring)."""
    spec = check_spec(spec, KEY)
    if isinstance(spec, str):
        return tuple((s - 1, t - 1) for s, t in resolve(spec, student_depth, teacher_depth, KEY))
    for s, t in spec:
        if s >= student_depth or t >= teacher_depth:
            raise ValueError(f"distill.{KEY}: pair [{s}, {t}] is out of range; decoder layers go from 0 to "
                             f"{student_depth - 1} for the student and {teacher_depth - 1} for the teacher")
    return spec


def attention_module(layer: torch.nn.Module) -> torch.nn.Module:
    """The self-attention module of a decoder layer (``self_attn`` in Llama, Qwen, Mistral, Gemma...)."""
    for name in ("self_attn", "attention", "attn"):
        if isinstance(getattr(layer, name, None), torch.nn.Module):
            return getattr(layer, name)
    raise ValueError(f"distill.attention_weight: {type(layer).__name__} has no `self_attn` module to capture")


def _recomputing() -> bool:
    """Whether autograd is running a backward (where a checkpointed layer's forward is recomputed)."""
    return torch._C._current_graph_task_id() != -1


class AttentionProbe:
    """Forward hooks on the attention modules of ``layers`` (decoder-layer indices) of ``model``:
    each forward leaves ``{layer: [B, H, T, T] probabilities}`` (through ``reduce`` when given),
    taken (and cleared) by ``take``.

    One probe per model at a time: a new probe removes the hooks of the previous one (a trainer set
    up again must not keep two captures alive)."""

    def __init__(self, model: torch.nn.Module, layers, who: str, reduce=None):
        from ..hidden.capture import decoder_layers

        self.who, self.maps, self.layers, self.reduce = who, {}, tuple(sorted(set(layers))), reduce
        decoder = decoder_layers(model)
        old = getattr(decoder, "_distill_attention_probe", None)
        if old is not None:
            old.remove()
        self.handles = [attention_module(decoder[layer]).register_forward_hook(self._record(layer))
                        for layer in self.layers]
        decoder._distill_attention_probe = self

    def _record(self, layer: int):
        def hook(module, args, output):
            if not _recomputing():
                maps = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                self.maps[layer] = self.reduce(maps) if maps is not None and self.reduce is not None else maps
        return hook

    def take(self) -> dict[int, torch.Tensor]:
        """The last forward's maps, cleared; every hooked layer must have given its probabilities."""
        maps, self.maps = self.maps, {}
        missing = [layer for layer in self.layers if maps.get(layer) is None]
        if missing:
            why = (f"gave no attention probabilities; {EAGER_HINT}" if missing[0] in maps else
                   "did not run on this batch (the teacher's forward is run by the online `teacher`'s source, before "
                   "this method's)" if self.who == "teacher" else "did not run on this batch")
            raise RuntimeError(f"distill.attention_weight: the {self.who}'s layer {missing[0]} {why}")
        return maps

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class StudentMaps:
    """The student's probe as the term reads it: the maps of the forward that just ran, refused when
    a training forward gave them no gradient (the attention would not train)."""

    def __init__(self, model: torch.nn.Module, layers):
        self.model = model
        self.probe = AttentionProbe(model, layers, "student")

    def __call__(self) -> dict[int, torch.Tensor]:
        maps = self.probe.take()
        if self.model.training and torch.is_grad_enabled() and not any(m.requires_grad for m in maps.values()):
            raise RuntimeError("distill.attention_weight: the student's attention probabilities carry no gradient "
                               "(reentrant gradient checkpointing, or nothing trainable up to the mapped layers); "
                               "set `gradient_checkpointing_kwargs: {use_reentrant: false}`")
        return maps


class TeacherAttentionSource:
    """→ ``AttentionMaps``: the supervised query rows of the mapped layers' probabilities that the
    online teacher's forward on this batch left in the probe (module docstring), each layer's heads
    already averaged in groups to the student's ``student_heads`` as it returns them
    (``losses.attention.group_heads``: the same mean the loss takes, taken before the rows are
    selected, so only H_s/H_t of each mapped map is kept)."""

    def __init__(self, model: torch.nn.Module, layers, device, student_heads: int):
        from ..losses.attention import group_heads
        from ..signals import AttentionMaps

        self.produces = (AttentionMaps,)
        self.probe = AttentionProbe(model, layers, "teacher", reduce=lambda maps: group_heads(maps, student_heads))
        self.device = device

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict:
        from ..losses.attention import key_mask, query_rows
        from ..signals import AttentionMaps

        maps = self.probe.take()
        layers = {layer: query_rows(m, mask.to(m.device)).to(self.device) for layer, m in maps.items()}
        del maps  # the whole [B, H, T, T] maps go; the rows stay
        mask = mask.to(self.device)
        return {AttentionMaps: AttentionMaps(layers, mask, key_mask(mask, inputs.get("attention_mask")))}


def _heads_and_depth(model: torch.nn.Module) -> tuple[int, int, str, float]:
    from ..modeling import unwrap_causal_lm

    config = unwrap_causal_lm(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (config.num_attention_heads, config.num_hidden_layers, getattr(config, "_attn_implementation", None),
            float(getattr(config, "attention_dropout", 0.0) or 0.0))


class AttentionTransfer(Method):
    name = "attention"
    key = "attention_weight"
    Fields = AttentionFields

    def check_config(self, cfg: dict, config) -> None:
        from ..teachers.placement import engine_of

        flags = [flag for flag in NOT_EAGER_FLAGS if cfg.get(flag)]
        impl = cfg.get("attn_implementation")
        if flags:
            raise SetupError(f"distill.attention_weight: `{flags[0]}: true` never returns the attention probabilities; "
                             f"remove it and {EAGER_HINT}")
        if impl is None and not cfg.get("eager_attention"):
            raise SetupError(f"distill.attention_weight: `attn_implementation` is unset (the model then loads sdpa, "
                             f"which returns no attention probabilities); {EAGER_HINT}")
        if impl not in (None, "eager"):
            why = "flash attention never forms them" if "flash" in impl else f"{impl} does not return them"
            raise SetupError(f"distill.attention_weight: `attn_implementation: {impl}`: {why}; {EAGER_HINT}")
        teacher_impl = config.teacher_attn_implementation
        if teacher_impl not in (None, "eager"):
            raise SetupError(f"distill.teacher_attn_implementation: {teacher_impl!r} returns no attention probabilities "
                             f"for attention transfer; remove it (the teacher then follows the student's eager)")
        if cfg.get("gradient_checkpointing"):
            reentrant = (cfg.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant")
            if reentrant or (reentrant is None and engine_of(cfg) == "zero3"):  # Axolotl's ZeRO-3 default: reentrant
                raise SetupError("distill.attention_weight: reentrant gradient checkpointing leaves the captured attention "
                                 "without gradient; set `gradient_checkpointing_kwargs: {use_reentrant: false}`")

    def _pairs(self, config, setup: Setup):
        teacher = setup.teacher()  # first: it names what is missing
        (student_heads, student_depth, student_impl, dropout), (teacher_heads, teacher_depth, teacher_impl, _) = (
            _heads_and_depth(setup.student), _heads_and_depth(teacher))
        for who, impl in (("student", student_impl), ("teacher", teacher_impl)):
            if impl != "eager":
                raise ValueError(f"distill.attention_weight: the {who} runs attention {impl!r}, which returns no "
                                 f"probabilities; {EAGER_HINT}")
        if dropout > 0:
            raise ValueError(f"distill.attention_weight: the student's attention_dropout is {dropout:g}, so its captured "
                             "probabilities would be the dropped-out ones; set it to 0 in the model config")
        from ..losses.attention import check_heads

        check_heads(student_heads, teacher_heads)
        return teacher, student_heads, attention_pairs(config.attention_layers, student_depth, teacher_depth)

    def source(self, config, setup: Setup):
        teacher, student_heads, pairs = self._pairs(config, setup)
        return TeacherAttentionSource(teacher, [t for _, t in pairs], setup.device, student_heads)

    def terms(self, config, setup: Setup) -> list:
        from ..losses.attention import AttentionTerm

        _, _, pairs = self._pairs(config, setup)
        setup.info("attention transfer: decoder-layer pairs (student, teacher) %s, weight %g", list(pairs),
                   config.attention_weight)
        return [AttentionTerm(pairs, StudentMaps(setup.student, [s for s, _ in pairs]), config.attention_weight)]
