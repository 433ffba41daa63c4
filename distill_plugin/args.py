"""The ``distill:`` block of an Axolotl YAML (also the config object of the TRL trainer).

Axolotl drops top-level keys that no pydantic model declares, so every key lives in the declared,
nested ``distill:`` block, which forbids unknown keys: a typo is an error naming the key, not a
silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .losses.kd import KDSettings

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]


class DistillConfig(BaseModel):
    """Distillation settings. Exactly one teacher source: ``teacher`` (online) or ``teacher_logits``."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(None, description="Teacher checkpoint: local path or hub id (online KD).")
    teacher_logits: str | None = Field(None, description="Directory of captured top-k teacher logits (offline KD).")
    teacher_dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    teacher_load_in_4bit: bool = False
    teacher_load_in_8bit: bool = False
    teacher_attn_implementation: str | None = None
    teacher_revision: str | None = None

    divergence: Divergence = "forward_kl"
    beta: float = Field(0.5, ge=0.0, le=1.0, description="JSD mixture weight of the teacher; 0 = forward KL, 1 = reverse KL.")
    skew: float = Field(0.1, ge=0.0, le=1.0, description="Skew-KL λ (DistiLLM).")
    temperature: float = Field(1.0, gt=0.0)
    temperature_squared: bool = Field(True, description="Multiply the KD term by T² (Hinton).")
    kd_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(0.0, ge=0.0)
    chunk_size: int | None = Field(None, gt=0, description="Rows per loss chunk; default sized for ~256 MiB fp32 logits.")

    topk_tail: Literal["bucket", "renormalize"] = Field(
        "bucket", description="Offline top-k: add a (k+1)-th tail bucket, or renormalise over the top-k."
    )
    topk: int | None = Field(None, gt=0, description="Offline KD: use the first k of the stored top-K (default: all).")
    check_tokenizer: bool = Field(True, description="Refuse a teacher whose tokenizer differs from the student's.")

    @model_validator(mode="after")
    def _check(self):
        if (self.teacher is None) == (self.teacher_logits is None):
            raise ValueError("distill: set exactly one of `teacher` (online KD) or `teacher_logits` (offline top-k KD)")
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise ValueError("distill: `teacher_load_in_4bit` and `teacher_load_in_8bit` are mutually exclusive")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("distill: `kd_weight` and `ce_weight` are both 0; nothing would be trained")
        return self

    def loss_terms(self) -> list:
        """The loss terms of this config (``losses.terms``): today one logit term, ``kd`` + ``ce``."""
        from .losses.terms import LogitTerms

        return [LogitTerms(self.kd_settings(), self.topk_tail, self.chunk_size)]

    def kd_settings(self) -> KDSettings:
        return KDSettings(
            divergence=self.divergence,
            temperature=self.temperature,
            beta=self.beta,
            skew=self.skew,
            kd_weight=self.kd_weight,
            ce_weight=self.ce_weight,
            temperature_squared=self.temperature_squared,
        )


class DistillArgs(BaseModel):
    """Axolotl input args contributed by the plugin (merged into Axolotl's config model)."""

    distill: DistillConfig | None = None
