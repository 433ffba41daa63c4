"""Teacher sources: where the teacher's distribution for each supervised row comes from.

``OnlineTeacher`` runs a frozen teacher model on the student's exact batch (same input_ids,
attention_mask and position_ids, so sample packing is identical) and feeds its final hidden states
and lm_head to the fused loss. The offline source (captured top-k logprobs) lives in
``distill_plugin.offline``. Both expose ``loss(student_head, student_rows, targets, inputs, mask,
normalizer) -> LossOutput``.
"""

from __future__ import annotations

import logging

import torch

from .args import DistillConfig
from .losses.kd import KDSettings, LossOutput, online_kd_loss
from .losses.topk import topk_kd_loss
from .modeling import OutputHead, final_hidden_states, output_head

LOG = logging.getLogger(__name__)
_TEACHERS: dict[tuple, torch.nn.Module] = {}  # one teacher per process, however often we are asked

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


def load_teacher(config: DistillConfig, device: torch.device | str) -> torch.nn.Module:
    """Load the teacher once per process: frozen, eval mode, no grad, optionally 4/8-bit."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    key = (config.teacher, config.teacher_dtype, config.teacher_load_in_4bit, config.teacher_load_in_8bit, str(device))
    if key in _TEACHERS:
        return _TEACHERS[key]
    kwargs = {"dtype": DTYPES[config.teacher_dtype], "revision": config.teacher_revision}
    if config.teacher_attn_implementation:
        kwargs["attn_implementation"] = config.teacher_attn_implementation
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
    LOG.info("loading teacher %s (%s%s)", config.teacher, config.teacher_dtype, ", quantized" if quantized else "")
    model = AutoModelForCausalLM.from_pretrained(config.teacher, **kwargs)
    if not quantized:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    _TEACHERS[key] = model
    return model


def check_same_tokenizer(student_tokenizer, teacher_path: str, revision: str | None = None) -> None:
    """Refuse to distil across tokenizers: the logit KD loss compares distributions id by id."""
    from transformers import AutoTokenizer

    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path, revision=revision)
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return
    differing = sorted(set(s_vocab.items()) ^ set(t_vocab.items()), key=lambda kv: kv[1])[:5]
    raise ValueError(
        f"distill.teacher: tokenizer of {teacher_path!r} differs from the student's "
        f"({len(t_vocab)} vs {len(s_vocab)} tokens; first differences: {differing}). Logit KD needs one "
        "shared tokenizer; set `distill.check_tokenizer: false` only if you know the ids line up."
    )


class OnlineTeacher:
    """A frozen teacher model run on the student's batch."""

    def __init__(self, model: torch.nn.Module, settings: KDSettings, chunk_size: int | None = None, vocab_size: int | None = None):
        self.model = model
        self.settings = settings
        self.chunk_size = chunk_size
        self.vocab_size = vocab_size

    def loss(self, student: OutputHead, student_rows, targets, inputs: dict, mask, normalizer) -> LossOutput:
        with torch.no_grad():
            teacher_rows = final_hidden_states(self.model, inputs)[:, :-1][mask]
        teacher = output_head(self.model)
        vocab = min(student.weight.shape[0], teacher.weight.shape[0], self.vocab_size or 1 << 62)
        return online_kd_loss(
            student_rows,
            student.weight,
            teacher_rows.to(teacher.weight.dtype),
            teacher.weight,
            targets,
            self.settings,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
            vocab_size=vocab,
            student_bias=student.bias,
            teacher_bias=teacher.bias,
            student_softcap=student.softcap,
            teacher_softcap=teacher.softcap,
        )


class OfflineTeacher:
    """Stored top-k teacher log-probs, delivered per batch by the offline collator.

    The collator's ``teacher_topk_*`` entry [b, t] is the distribution at position t predicting
    t+1, the same convention as the hidden states, so the same row mask selects both.
    """

    def __init__(self, settings: KDSettings, tail: str, capture_temperature: float, chunk_size: int | None = None):
        self.settings = settings
        self.tail = tail
        self.capture_temperature = capture_temperature
        self.chunk_size = chunk_size

    def loss(self, student: OutputHead, student_rows, targets, inputs: dict, mask, normalizer) -> LossOutput:
        try:
            ids, logprobs = inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"]
        except KeyError:
            raise KeyError(
                "offline KD batch has no teacher_topk_ids/teacher_topk_logprobs: the offline collator "
                "was not used (is `distill.teacher_logits` set and the plugin listed in `plugins:`?)"
            ) from None
        return topk_kd_loss(
            student_rows,
            student.weight,
            ids[:, :-1][mask],
            logprobs[:, :-1][mask],
            targets,
            self.settings,
            self.tail,
            self.capture_temperature,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
            student_bias=student.bias,
            student_softcap=student.softcap,
        )
