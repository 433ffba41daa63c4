"""The ``distill:`` block of an Axolotl YAML (also the config object of the TRL trainer).

Axolotl drops top-level keys that no pydantic model declares, so every key lives in the declared,
nested ``distill:`` block, which forbids unknown keys: a typo is an error naming the key, not a
silently ignored setting. The block is every method's ``Fields`` (``methods/``) plus the loss's
(``methods.loss_fields``); each validates its own keys.
"""

from __future__ import annotations

from pydantic import BaseModel, model_validator

from .methods import METHODS, LossFields, Setup, loss_terms
from .methods.loss_fields import MAX_TEMPERATURE
from .methods.served import TeacherServerConfig

__all__ = ["MAX_TEMPERATURE", "DistillArgs", "DistillConfig", "TeacherServerConfig"]

# The reference's order: the teacher sources, the loss, the other methods. pydantic lists inherited
# fields from the last base to the first, hence the reversal.
_ORDER = ([m.Fields for m in METHODS if m.is_teacher_source] + [LossFields]
          + [m.Fields for m in METHODS if not m.is_teacher_source])


class DistillConfig(*reversed(_ORDER)):
    """Distillation settings: every method's keys (``methods``); at least one names a teacher source
    (``Method.is_teacher_source``), and each method refuses the combinations it cannot serve.

    Every field's ``description`` is the ``distill:`` reference (``scripts/gen_config_table.py``).
    """

    @model_validator(mode="after")
    def _check_teacher(self):
        sources = [m for m in METHODS if m.is_teacher_source]
        if not any(m.active(self) for m in sources):
            names = [f"`{m.key}`" for m in sources]
            raise ValueError(f"distill: set exactly one of {', '.join(names[:-1])} or {names[-1]}")
        return self

    def loss_terms(self, student=None, teacher=None) -> list:
        """The loss terms of this config (``methods.loss_terms``); a hidden-state term needs the
        ``student`` and ``teacher`` models (their depths and widths)."""
        return loss_terms(self, Setup(self, tokenizer=None, student=student, device=None, teacher_model=teacher,
                                      load=False))


class DistillArgs(BaseModel):
    """Axolotl input args contributed by the plugin (merged into Axolotl's config model)."""

    distill: DistillConfig | None = None
