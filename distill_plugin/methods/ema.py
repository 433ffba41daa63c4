"""EMA self-distillation: ``distill.ema_decay`` d, the teacher an exponential moving average of the
student's own trainable weights; no teacher model.

    EMA_0 = θ_0,    EMA_t = d·EMA_{t−1} + (1−d)·θ_t

θ_t is the trainable parameters after optimizer step t, θ_0 those when training starts
(``on_train_begin``: after DDP has broadcast rank 0's weights, so every process starts from the same
θ_0; a resumed run keeps the checkpoint's average instead). The average is updated right after each
optimizer step (``TrainerCallback.on_optimizer_step``, before the step counter moves), so step t+1,
which computes θ_{t+1} from θ_t, distils from EMA_t (θ_t included), and the evaluations and the
checkpoint taken after step t see EMA_t. d = 1 keeps the initial weights: a KL penalty towards the
starting model.

Trainable means ``requires_grad`` when the trainer is built: with a LoRA student the adapters only
(the frozen base is shared by student and teacher), so the average costs one fp32 copy of the
adapters, not a second model. The average is kept in fp32 (float64 parameters: float64) and cast to
each parameter's dtype when swapped in. Every DDP or ZeRO-1/2 process holds the same weights after
each step (the gradients are averaged), hence the same average: nothing is communicated. FSDP and
ZeRO-3 shard the parameters and are refused.

Signal: ``DenseLogits`` — the student's own forward, in eval mode (no dropout) under ``no_grad``,
with each trainable parameter's ``data`` swapped for its average and restored after; its final
hidden rows and output head (the lm_head's average when the lm_head is trainable, else the frozen
head both share). Term: the fused ``kd`` + ``ce`` (``LogitTerms``). Step hook: the update above,
and the average as its state, saved in each checkpoint and restored on resume.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import TrainerCallback

from ..errors import SetupError
from ..hidden.capture import hidden_rows
from ..modeling import output_head
from ..signals import DenseLogits, OutputHead
from .base import FieldsBase, Method, Setup

# The other teacher sources: the EMA takes their place, so naming one beside it is a contradiction.
OTHER_TEACHERS = ("teacher", "teacher_logits", "teacher_server")


class EMAFields(FieldsBase):
    ema_decay: float | None = Field(
        None, gt=0.0, le=1.0,
        description="EMA self-distillation: the teacher is EMA_t = d·EMA_{t−1} + (1−d)·θ_t of the student's trainable "
        "weights (LoRA: the adapters), updated after each optimizer step; d = this value (1: the initial weights). No teacher model.",
    )

    @model_validator(mode="after")
    def _check_ema(self):
        named = [f"`{key}`" for key in OTHER_TEACHERS if getattr(self, key, None) is not None]
        if self.ema_decay is not None and named:
            raise ValueError(f"distill: `ema_decay` makes the student's own moving average the teacher; remove {' / '.join(named)}")
        return self


class EMAWeights:
    """The moving average of ``params`` ({name: parameter}), initialised to their current values;
    ``loaded``: restored from a checkpoint (then ``start`` keeps it)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        if not params:
            raise ValueError("distill.ema_decay: the student has no trainable parameters to average")
        self.params, self.decay, self.loaded = params, decay, False
        self.average = {name: p.detach().to(torch.promote_types(p.dtype, torch.float32), copy=True)
                        for name, p in params.items()}

    @torch.no_grad()
    def start(self) -> None:
        """EMA_0 = θ_0, the parameters as training starts, unless the average was loaded."""
        if not self.loaded:
            for name, param in self.params.items():
                self.average[name].copy_(param.detach())

    @torch.no_grad()
    def update(self) -> None:
        """EMA ← d·EMA + (1−d)·θ for every parameter."""
        for name, param in self.params.items():
            self.average[name].mul_(self.decay).add_(param.detach().to(self.average[name].dtype), alpha=1.0 - self.decay)

    def swapped(self, param: torch.nn.Parameter) -> torch.Tensor | None:
        """The average of ``param`` in its dtype (None when it is not averaged)."""
        name = next((n for n, p in self.params.items() if p is param), None)
        return None if name is None else self.average[name].to(param.dtype)

    @contextmanager
    def swapped_in(self):
        """Within the block, every averaged parameter holds its average (``param.data``); restored after."""
        saved = {name: p.data for name, p in self.params.items()}
        try:
            for name, param in self.params.items():
                param.data = self.average[name].to(param.dtype)
            yield
        finally:
            for name, param in self.params.items():
                param.data = saved[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.average):
            missing, extra = sorted(set(self.average) - set(state)), sorted(set(state) - set(self.average))
            raise ValueError(f"distill.ema_decay: the checkpoint's average does not match the student's trainable "
                             f"parameters (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, tensor in state.items():
            self.average[name].copy_(tensor)
        self.loaded = True


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` of the parameters that train (``requires_grad``), each once (tied weights)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class EMATeacherSource:
    """The student run with its averaged weights (module docstring) → ``DenseLogits``."""

    produces = (DenseLogits,)

    def __init__(self, student: torch.nn.Module, decay: float, vocab_size: int | None = None):
        self.student, self.vocab_size = student, vocab_size
        self.ema = EMAWeights(trainable_parameters(student), decay)

    def request_hidden(self, layers) -> None:
        raise ValueError("distill.ema_decay: hidden-state KD needs a teacher model (`teacher`)")

    def head(self) -> OutputHead:
        """The teacher's output head: the lm_head's average where it trains, else the shared frozen head."""
        head = output_head(self.student)
        weight, bias = (self.ema.swapped(t) if t is not None else None for t in (head.weight, head.bias))
        return OutputHead(head.weight.detach() if weight is None else weight,
                          head.bias.detach() if bias is None and head.bias is not None else bias, head.softcap)

    def signals(self, inputs: dict, mask: torch.Tensor) -> dict[type, Any]:
        training = self.student.training
        try:
            self.student.eval()
            with torch.no_grad(), self.ema.swapped_in():
                rows, _ = hidden_rows(self.student, inputs, mask, ())
        finally:
            self.student.train(training)
        return {DenseLogits: DenseLogits(rows, self.head(), self.vocab_size)}


class EMAUpdate(TrainerCallback):
    """``EMAWeights.start`` when training starts, ``EMAWeights.update`` after each optimizer step."""

    def __init__(self, ema: EMAWeights):
        self.ema = ema

    def on_train_begin(self, args, state, control, **kwargs):
        self.ema.start()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.ema.update()


class EMAHook:
    """The step hook: leaves the batches as they are; its state is the average (saved per checkpoint)."""

    def __init__(self, ema: EMAWeights):
        self.ema = ema

    def batches(self, trainer, iterator):
        return iterator

    def logs(self, trainer) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema.load_state_dict(state)


class EMASelfDistill(Method):
    name = "ema"
    key = "ema_decay"
    is_teacher_source = True
    Fields = EMAFields

    def check_config(self, cfg: dict, config) -> None:
        from ..teachers.placement import engine_of

        engine = engine_of(cfg)
        if engine in ("fsdp1", "fsdp2", "zero3"):
            raise SetupError(f"distill.ema_decay: the EMA teacher swaps whole weights into the student, and {engine} "
                             "shards them; train with DDP or ZeRO-1/2")

    def source(self, config, setup: Setup):
        source = EMATeacherSource(setup.student, config.ema_decay, len(setup.tokenizer))
        count = sum(t.numel() for t in source.ema.average.values())
        setup.info("teacher = EMA of the student's %d trainable tensors (%d parameters), decay %g",
                   len(source.ema.average), count, config.ema_decay)
        return source

    def terms(self, config, setup: Setup) -> list:
        return [config.logit_terms()]

    def step_hook(self, config, trainer):
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if trainer.is_fsdp_enabled or getattr(plugin, "zero_stage", 0) == 3:
            raise ValueError("distill.ema_decay: the EMA teacher needs whole weights in each process (no FSDP / ZeRO-3)")
        source = trainer.teacher_source
        if not isinstance(source, EMATeacherSource):
            raise ValueError("distill.ema_decay: the trainer's teacher source is not the EMA of its student")
        trainer.pop_callback(EMAUpdate)  # one update per step, even if the trainer is set up again
        trainer.add_callback(EMAUpdate(source.ema))
        return EMAHook(source.ema)
