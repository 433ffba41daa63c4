"""Online logit KD: ``distill.teacher``, a frozen teacher model run on the student's exact batch.

Signal: ``DenseLogits`` (the teacher's final hidden states of the supervised rows + its lm_head; the
fused loss builds the logits chunk by chunk) and ``HiddenStates`` when a hidden-state term asks.
Term: the fused ``kd`` + ``ce`` (``LogitTerms``). With a stored ``teacher_logits`` beside it, the
model gives the hidden states only and the logits come from the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..errors import SetupError, first_line
from .base import FieldsBase, Method, Setup

# Keys of the teacher model: meaningless without `teacher`.
MODEL_KEYS = ("teacher_dtype", "teacher_load_in_4bit", "teacher_load_in_8bit", "teacher_attn_implementation",
              "teacher_device", "teacher_revision", "teacher_placement")


class OnlineFields(FieldsBase):
    teacher: str | None = Field(
        None, description="Online teacher: local path or hub id. Exactly one of `teacher` / `teacher_logits` / `teacher_server` / `ema_decay`."
    )
    teacher_dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="Dtype the online teacher is loaded in (compute dtype when quantised)."
    )
    teacher_load_in_4bit: bool = Field(
        False, description="Load the teacher 4-bit (bitsandbytes NF4, double quant); lm_head stays unquantised."
    )
    teacher_load_in_8bit: bool = Field(
        False, description="Load the teacher 8-bit (bitsandbytes); exclusive with `teacher_load_in_4bit`."
    )
    teacher_attn_implementation: str | None = Field(
        None, description="`attn_implementation` of the teacher (e.g. `sdpa`); default: the student's, so packing behaves the same."
    )
    teacher_device: str | None = Field(
        None, description="Device of the online teacher (e.g. `cuda:1`, `cpu`); default: the student's. Its lm_head is copied to the student's device."
    )
    teacher_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the teacher.")
    teacher_placement: Literal["replicate", "shard", "device_map"] = Field(
        "replicate", description="Online teacher across devices: a whole copy per process, `shard` its decoder layers over all processes (FSDP2), or `device_map` (one process, layers spread over all GPUs). README: Scaling out."
    )
    check_tokenizer: bool = Field(True, description="Refuse an online or served teacher whose tokenizer differs from the student's.")

    @model_validator(mode="after")
    def _check_online(self):
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise ValueError("distill: `teacher_load_in_4bit` and `teacher_load_in_8bit` are mutually exclusive")
        if self.teacher_placement != "replicate" and self.teacher_device is not None:
            raise ValueError(f"distill: `teacher_device` places a whole teacher; it has no meaning with `teacher_placement: {self.teacher_placement}`")
        if self.teacher_placement == "shard" and (self.teacher_load_in_4bit or self.teacher_load_in_8bit):
            raise ValueError("distill: `teacher_placement: shard` cannot split a bitsandbytes-quantised teacher; use `device_map` or `replicate`")
        served = getattr(self, "teacher_server", None) is not None
        other = "with a served teacher (`teacher_server`)" if served else "with an offline teacher (`teacher_logits`)"
        self.refuse_unless(MODEL_KEYS, self.teacher is not None, other)
        self.refuse_unless(["check_tokenizer"], self.teacher is not None or served, other)
        return self


def resolve_teacher(config):
    """The teacher's ``PretrainedConfig``: proves the path or hub id resolves (config.json only)."""
    from transformers import AutoConfig

    teacher = config.teacher
    try:
        return AutoConfig.from_pretrained(teacher, revision=config.teacher_revision)
    except Exception as err:  # transformers raises OSError, ValueError or hub errors for a bad id
        if Path(teacher).expanduser().exists():
            raise SetupError(f"distill.teacher: {teacher!r} exists but holds no loadable config.json ({first_line(err)})") from None
        if teacher.startswith((".", "/", "~")) or teacher.count("/") > 1:
            raise SetupError(f"distill.teacher: no such directory {teacher!r}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        where = "not in the local hub cache and HF_HUB_OFFLINE is set" if offline else first_line(err)
        raise SetupError(f"distill.teacher: hub id {teacher!r} cannot be resolved: {where}") from None


def with_teacher_model(fields: dict, teacher_model, device) -> tuple[dict, object]:
    """TRL's ``teacher_model=`` (a model or a path) as ``distill:`` keys: ``(fields with `teacher`,
    the in-memory model frozen on ``teacher_device`` or ``device``, else None)``."""
    import torch

    if isinstance(teacher_model, torch.nn.Module):
        fields = {**fields, "teacher": getattr(teacher_model, "name_or_path", "") or "<in-memory teacher>"}
        return fields, teacher_model.to(fields.get("teacher_device") or device).eval().requires_grad_(False)
    if teacher_model is not None:
        return {**fields, "teacher": teacher_model}, None
    return fields, None


def check_placement(cfg: dict, config) -> None:
    """The teacher's placement (``teachers.placement``) works with the training engine."""
    from ..teachers.placement import engine_of, placement_error, world_size

    error = placement_error(config.teacher_placement, world_size(), engine_of(cfg))
    if error:
        raise SetupError(f"distill.teacher_placement: {error}")


class OnlineLogits(Method):
    name = "online"
    key = "teacher"
    is_teacher_source = True
    Fields = OnlineFields

    def check_config(self, cfg: dict, config) -> None:
        check_placement(cfg, config)

    def check_resources(self, cfg, config, tokenizer) -> None:
        resolve_teacher(config)
        if config.check_tokenizer and tokenizer is not None:
            from ..teachers import check_same_tokenizer

            try:
                check_same_tokenizer(tokenizer, config.teacher, config.teacher_revision)
            except ValueError as err:
                raise SetupError(first_line(err)) from None

    def packing_warning(self, cfg, config) -> str | None:
        from ..modeling import PACKING_SAFE

        attn = config.teacher_attn_implementation
        if attn and attn not in PACKING_SAFE:
            return (f"sample_packing with distill.teacher_attn_implementation={attn!r}: packed documents attend to "
                    f"each other in the teacher; leave it unset to follow the student's {cfg.get('attn_implementation')!r}")
        return None

    def logits_from_store(self, config) -> bool:
        """Hidden-state KD beside a stored ``teacher_logits``: the model gives hidden states only."""
        return getattr(config, "teacher_logits", None) is not None

    def source(self, config, setup: Setup):
        from ..modeling import output_head
        from ..teachers import TeacherModelSource, check_same_tokenizer

        if config.check_tokenizer and setup.teacher_model is None:  # now with the tokenizer the trainer built
            check_same_tokenizer(setup.tokenizer, config.teacher, config.teacher_revision)
        teacher = setup.teacher()
        source = TeacherModelSource(teacher, len(setup.tokenizer), logits=not self.logits_from_store(config),
                                    device=setup.device)
        rows = (output_head(teacher).weight.shape[0], output_head(setup.student).weight.shape[0])
        cut = "" if rows[0] == rows[1] == len(setup.tokenizer) else f", lm_head rows teacher {rows[0]} / student {rows[1]} cut to it"
        setup.info("teacher = online %s, dtype %s, device %s, attention %s; vocab %d shared tokens%s%s", config.teacher,
                   next(teacher.parameters()).dtype, source.teacher_device, teacher.config._attn_implementation,
                   len(setup.tokenizer), cut, "; hidden states only (logits from the store)" if not source.logits else "")
        return source

    def terms(self, config, setup: Setup) -> list:
        return [] if self.logits_from_store(config) else [config.logit_terms()]
