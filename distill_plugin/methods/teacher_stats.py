"""Teacher statistics in the training logs: ``distill.log_teacher_stats: true``.

Logs ``teacher_entropy`` (the teacher's mean entropy at the training temperature, nats) and
``top1_agreement`` (the fraction of supervised rows where the student's and the teacher's most
likely next token agree) beside the loss components, train and eval (``losses.stats``). Consumes
the same-tokenizer teacher's signal (dense or top-k logits); trains nothing. It costs one more pass
over the vocabulary per chunk of rows (the student's and the teacher's logits, no gradient).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import FieldsBase, Method, Setup


class TeacherStatsFields(FieldsBase):
    log_teacher_stats: bool = Field(
        False, description="Log `teacher_entropy` (mean, at the training T) and `top1_agreement` (student vs teacher) beside the loss components."
    )

    @model_validator(mode="after")
    def _check_teacher_stats(self):
        if self.log_teacher_stats and getattr(self, "cross_tokenizer", "off") != "off":
            raise ValueError("distill.log_teacher_stats compares the two models token by token; it has no meaning with "
                             "`cross_tokenizer`; remove it")
        return self


class TeacherStats(Method):
    name = "teacher_stats"
    key = "log_teacher_stats"
    Fields = TeacherStatsFields

    def terms(self, config, setup: Setup) -> list:
        from ..losses.stats import TeacherStatsTerm

        return [TeacherStatsTerm(config.temperature, config.chunk_size)]
