"""Loading an online teacher (frozen, once per process, optionally 4/8-bit) and the tokenizer check."""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from ..alignment.tokens import tokenizer_difference
from .placement import placement_error, shard_teacher, world_size

__all__ = ["DTYPES", "TeacherSettings", "check_same_tokenizer", "load_teacher", "tokenizer_difference"]

LOG = logging.getLogger(__name__)
_TEACHERS: dict[tuple, torch.nn.Module] = {}  # one teacher per process, however often we are asked

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


class TeacherSettings(Protocol):
    """What ``load_teacher`` reads of its config (fields of ``args.DistillConfig``)."""

    teacher: str
    teacher_revision: str | None
    teacher_dtype: str
    teacher_load_in_4bit: bool
    teacher_load_in_8bit: bool
    teacher_device: str | None
    teacher_attn_implementation: str | None
    teacher_placement: str


def load_teacher(config: TeacherSettings, device: torch.device | str, attn_implementation: str | None = None) -> torch.nn.Module:
    """Load the teacher once per process: frozen, eval mode, no grad, optionally 4/8-bit.

    ``device``: ``config.teacher_device`` when set. Attention: ``config.teacher_attn_implementation``,
    else ``attn_implementation`` (the student's, so both treat packed documents alike), else the default.
    ``config.teacher_placement`` (``teachers.placement``): a whole copy on ``device``, FSDP2-sharded
    over the processes, or spread over the GPUs by ``device_map="auto"``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = config.teacher_device or device
    attn = config.teacher_attn_implementation or attn_implementation
    placement = config.teacher_placement
    error = placement_error(placement, world_size())  # the engine was checked before (preflight)
    if error:
        raise ValueError(f"distill.teacher_placement: {error}")
    key = (config.teacher, config.teacher_dtype, config.teacher_load_in_4bit, config.teacher_load_in_8bit, str(device), attn, placement)
    if key in _TEACHERS:
        return _TEACHERS[key]
    kwargs = {"dtype": DTYPES[config.teacher_dtype], "revision": config.teacher_revision}
    if attn:
        kwargs["attn_implementation"] = attn
    quantized = config.teacher_load_in_4bit or config.teacher_load_in_8bit
    if quantized:
        compute = DTYPES[config.teacher_dtype] if config.teacher_dtype != "auto" else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=config.teacher_load_in_4bit,
            load_in_8bit=config.teacher_load_in_8bit,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    if placement == "device_map":
        kwargs["device_map"] = "auto"
    LOG.info("loading teacher %s (%s%s)", config.teacher, config.teacher_dtype, ", quantized" if quantized else "")
    model = AutoModelForCausalLM.from_pretrained(config.teacher, **kwargs)
    if placement == "shard":
        model = shard_teacher(model, device)
    elif not quantized and placement == "replicate":
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    _TEACHERS[key] = model
    return model


def check_same_tokenizer(student_tokenizer, teacher_path: str, revision: str | None = None) -> None:
    """Refuse to distil across tokenizers: the logit KD loss compares distributions id by id."""
    from transformers import AutoTokenizer

    difference = tokenizer_difference(student_tokenizer, AutoTokenizer.from_pretrained(teacher_path, revision=revision))
    if difference:
        raise ValueError(
            f"distill.teacher: tokenizer of {teacher_path!r} differs from the student's ({difference}). Logit KD "
            "needs one shared tokenizer; set `distill.check_tokenizer: false` only if you know the ids line up."
        )
