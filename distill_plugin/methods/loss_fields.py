"""The ``distill:`` keys of the loss every method shares: divergence, temperature, weights, chunking.

    loss = (kd_weight · T² · Σ_i KD_i + ce_weight · Σ_i CE_i) / N

over the N supervised rows of the optimizer step (row t predicts token t+1); ``losses.kd`` has the
divergences, ``losses.topk`` the tail modes of a top-k teacher.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..losses.divergences import DIVERGENCES
from ..losses.kd import KDSettings
from ..losses.topk import TailMode
from .base import FieldsBase

# Above this both distributions are near uniform for any realistic logit range: a typo, not a setting.
MAX_TEMPERATURE = 20.0
# Divergence parameters, each meaningful for some divergences only.
DIVERGENCE_ONLY = {"beta": ("jsd",), "skew": ("skew_forward_kl", "skew_reverse_kl")}

# The choices come from the registries, so a new divergence or tail mode is one edit in losses/.
Divergence = Literal[DIVERGENCES]


class LossFields(FieldsBase):
    divergence: Divergence = Field(
        "forward_kl", description="KD divergence between teacher P and student Q (see the maths below)."
    )
    beta: float = Field(0.5, ge=0.0, le=1.0, description="JSD mixture weight of the teacher; 0 = forward KL, 1 = reverse KL.")
    skew: float = Field(0.1, ge=0.0, le=1.0, description="Skew-KL λ (DistiLLM).")
    temperature: float = Field(
        1.0, gt=0.0, le=MAX_TEMPERATURE,
        description=f"T, dividing teacher and student logits inside the loss (CE stays at T = 1); at most {MAX_TEMPERATURE:g}.",
    )
    temperature_squared: bool = Field(True, description="Multiply the KD term by T² (Hinton).")
    kd_weight: float = Field(1.0, ge=0.0, description="Weight of the KD component: loss = (kd_weight·T²·ΣKD + ce_weight·ΣCE) / N.")
    ce_weight: float = Field(0.0, ge=0.0, description="Weight of the hard-label CE component; not both weights 0.")
    chunk_size: int | None = Field(
        None, gt=0, description="Rows per loss chunk; default keeps one fp32 [chunk, V] buffer ≈ 256 MiB (256 rows at V = 151,936)."
    )
    topk_tail: TailMode = Field(
        "bucket", description="Top-k KD (stored or served): add a (k+1)-th tail bucket on both sides, or renormalise over the top-k."
    )

    @model_validator(mode="after")
    def _check_loss(self):
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("distill: `kd_weight` and `ce_weight` are both 0; nothing would be trained")
        for name, users in DIVERGENCE_ONLY.items():
            self.refuse_unless([name], self.divergence in users,
                               f"with divergence {self.divergence!r}; it is used by {', '.join(users)}")
        sparse = getattr(self, "teacher_logits", None) is not None or getattr(self, "teacher_server", None) is not None
        self.refuse_unless(["topk_tail"], sparse, "with an online teacher (`teacher`): it weighs a stored or served top-k")
        return self

    def kd_settings(self) -> KDSettings:
        return KDSettings(divergence=self.divergence, temperature=self.temperature, beta=self.beta, skew=self.skew,
                          kd_weight=self.kd_weight, ce_weight=self.ce_weight,
                          temperature_squared=self.temperature_squared)

    def logit_terms(self):
        """The fused ``kd`` + ``ce`` term of a same-tokenizer teacher (dense or top-k logits)."""
        from ..losses.terms import LogitTerms

        return LogitTerms(self.kd_settings(), self.topk_tail, self.chunk_size)
