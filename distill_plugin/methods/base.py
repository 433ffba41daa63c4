"""What a distillation method declares, and what it is given when the run is assembled.

A method is one module of this package defining one ``Method`` subclass:

    Fields             a pydantic model of its ``distill:`` keys and their validators; every
                       method's ``Fields`` are mixed into ``args.DistillConfig``, so its keys sit
                       flat in the one ``distill:`` block
    active(config)     whether the config uses it
    check_config       the raw YAML, before Axolotl validates it (engine, packing): ``SetupError``
    check_resources    files the method reads, before the student loads (a teacher's config.json,
                       a store, a server): ``SetupError``
    packing_warning    why its model would let packed documents attend to each other, or None
    collator           Axolotl's collator for the batches the method needs, or None
    source             the teacher source producing its signal (``teachers``), or None
    terms              its loss terms (``losses.terms``)
    step_hook          a ``StepHook`` on the trainer's optimizer steps, or None

``methods.assemble`` calls them for the Axolotl plugin and for TRL's ``DistillSFTTrainer`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Protocol

import torch
from pydantic import BaseModel, ConfigDict


class FieldsBase(BaseModel):
    """Base of every method's ``Fields``: unknown keys are errors, values are not coerced."""

    # strict: `temperature: "2"` or `teacher_load_in_4bit: "yes"` is an error, not a coercion.
    model_config = ConfigDict(extra="forbid", strict=True)

    def refuse_unless(self, names, used: bool, why: str) -> None:
        """Refuse each of ``names`` set away from its default when it is not ``used``: "distill.<name>
        has no effect <why>; remove it" (a user who sets
        a key expects an effect). Compared with the default, not ``model_fields_set``: Axolotl's loader
        hands the block back with every field filled in."""
        if used:
            return
        for name in names:
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"distill.{name} has no effect {why}; remove it")


@dataclass
class Setup:
    """What the assembly knows when it builds sources and terms: the validated config, the student's
    tokenizer and (unwrapped) model, the device the loss runs on, and the run's teacher model,
    loaded on first use and shared by every method that reads it (``teacher()``)."""

    config: Any
    tokenizer: Any
    student: torch.nn.Module
    device: torch.device | str
    teacher_model: torch.nn.Module | None = None  # given in memory (TRL's ``teacher_model=``)
    log: Any = None  # a ``logging.Logger`` for the start-up lines (None: silent)
    load: bool = True  # False: a method that needs the teacher model gets only ``teacher_model``
    _loaded: dict = field(default_factory=dict)

    def teacher(self) -> torch.nn.Module:
        """The ``distill.teacher`` model, frozen on its device (``teachers.load_teacher``), loaded once."""
        if self.teacher_model is not None:
            return self.teacher_model
        if not self.load or self.student is None:
            raise ValueError("distill: this method needs the student and teacher models (their depths and widths)")
        if "teacher" not in self._loaded:
            from ..teachers import load_teacher

            attn = getattr(self.student.config, "_attn_implementation", None)
            self._loaded["teacher"] = load_teacher(self.config, self.device, attn)
        return self._loaded["teacher"]

    def info(self, message: str, *args) -> None:
        if self.log is not None:
            self.log.info("distill_plugin: " + message, *args)


class StepHook(Protocol):
    """Something a method does around each optimizer step (``trainer.DistillTrainerMixin``)."""

    def batches(self, trainer, iterator: Iterator[dict]) -> Iterator[dict]:
        """The step's micro-batches (read ahead, regenerated...); the Trainer counts tokens over them."""

    def logs(self, trainer) -> dict[str, float]:
        """Values logged beside the loss components at each training log (a collective under DDP)."""

    # Optional: a hook with state that a resumed run needs defines ``state_dict() -> {name: tensor}``
    # and ``load_state_dict(state)``; the trainer saves it in every checkpoint
    # (``trainer.hook_state_file``) and restores it on ``resume_from_checkpoint``.


class Method:
    """One distillation method (module docstring). The defaults do nothing."""

    name: ClassVar[str]
    key: ClassVar[str]  # the `distill:` key that turns it on, named in its errors
    Fields: ClassVar[type[FieldsBase]]
    # Whether its key names a teacher (`teacher`, `teacher_logits`...): a config names one.
    is_teacher_source: ClassVar[bool] = False
    # Methods it takes the place of when both are active (their source and terms are not built).
    replaces: ClassVar[tuple[str, ...]] = ()
    # Its batches need the plugin's collator (Axolotl only; refused by DistillSFTTrainer).
    needs_collator: ClassVar[bool] = False

    def active(self, config) -> bool:
        """Whether the config uses it; by default, whether its ``key`` is set away from the default."""
        return getattr(config, self.key) != type(config).model_fields[self.key].default

    def check_config(self, cfg: dict, config) -> None:
        """The raw YAML dict (``cfg``) with the validated block (``config``); raise ``SetupError``."""

    def check_resources(self, cfg, config, tokenizer) -> None:
        """The validated Axolotl cfg; ``tokenizer`` is the student's, or None when it cannot load yet."""

    def packing_warning(self, cfg, config) -> str | None:
        """With ``sample_packing`` and a student whose attention keeps documents apart: why the
        method's own model would not (one warning line), or None."""
        return None

    def collator(self, cfg, config, is_eval: bool):
        """``(collator class, kwargs)`` for ``BasePlugin.get_collator_cls_and_kwargs``, or None."""
        return None

    def source(self, config, setup: Setup):
        return None

    def terms(self, config, setup: Setup) -> list:
        return []

    def step_hook(self, config, trainer) -> StepHook | None:
        return None
