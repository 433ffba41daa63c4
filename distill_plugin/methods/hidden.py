"""Hidden-state KD: ``distill.hidden_weight`` > 0, the student's hidden states matched to the teacher's.

Signal: ``HiddenStates`` of the online ``teacher`` at the mapped layers (``hidden.layer_map``: the
source is asked for them at setup). Term: ``hidden`` = Σ_i (1/P) Σ_p ℓ(W_p s_{p,i}, t_{p,i}) over
the P layer pairs (``losses.hidden``), with learned projectors W_p (``hidden.projector``) trained
beside the student and saved apart from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..errors import SetupError
from ..hidden.layer_map import LayerSpec, as_field, check_spec
from ..losses.hidden import HiddenLoss
from .base import FieldsBase, Method, Setup


class HiddenFields(FieldsBase):
    hidden_weight: float = Field(0.0, ge=0.0, description="Weight of the hidden-state component `hidden`; 0 = off.")
    hidden_loss: HiddenLoss = Field("cosine", description="Per-row hidden-state loss: `cosine`, `mse` or `normalized_mse`.")
    hidden_layers: LayerSpec = Field(
        "uniform:4", description="Layer map: `uniform:N`, `last:N` or `[[student, teacher], ...]` hidden-state indices (0 = embeddings, L = final)."
    )
    hidden_projector: Literal["linear", "none"] = Field(
        "linear", description="`linear`: a learned map per pair, student → teacher width (saved beside the checkpoint); `none`: equal widths."
    )
    hidden_projector_lr: float | None = Field(None, gt=0.0, description="Projectors' learning rate (default: the student's).")

    @model_validator(mode="after")
    def _check_hidden(self):
        try:
            self.hidden_layers = as_field(check_spec(self.hidden_layers))
        except ValueError as error:
            raise ValueError(str(error)) from None
        if self.hidden_weight and getattr(self, "teacher", None) is None:
            raise ValueError(
                "distill: `hidden_weight` > 0 needs the online `teacher` for its hidden states; with offline "
                "`teacher_logits` set both (the logits then come from the store, the hidden states from `teacher`)"
            )
        return self


class HiddenStateKD(Method):
    name = "hidden"
    key = "hidden_weight"
    Fields = HiddenFields

    def check_config(self, cfg: dict, config) -> None:
        from ..teachers.placement import engine_of

        engine = engine_of(cfg)
        if engine != "ddp":
            raise SetupError(f"distill.hidden_weight: hidden-state KD runs under DDP only (its projectors live outside the "
                             f"{engine} engine's optimizer); remove `hidden_weight` or train with DDP")

    def terms(self, config, setup: Setup) -> list:
        from ..hidden.capture import depth_and_width
        from ..hidden.layer_map import resolve
        from ..hidden.projector import Projectors
        from ..losses.hidden import HiddenTerm

        teacher = setup.teacher()  # first: it names what is missing
        (student_depth, student_width), (teacher_depth, teacher_width) = (depth_and_width(setup.student),
                                                                          depth_and_width(teacher))
        pairs = resolve(config.hidden_layers, student_depth, teacher_depth)
        projector = Projectors(len(pairs), student_width, teacher_width, config.hidden_projector)
        return [HiddenTerm(pairs, projector, config.hidden_loss, config.hidden_weight, config.hidden_projector_lr)]
