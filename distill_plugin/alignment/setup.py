"""Setting up cross-tokenizer KD: the teacher's tokenizer, the checks, and the teacher source."""

from __future__ import annotations

from .collator import load_teacher_tokenizer
from .tokens import backend_json, next_byte_classes, tokenizer_difference


def teacher_tokenizer_path(config) -> tuple[str, str | None]:
    """(path or hub id, revision) of the teacher's tokenizer: ``teacher_tokenizer`` or the teacher's own."""
    if config.teacher_tokenizer:
        return config.teacher_tokenizer, None
    return config.teacher, config.teacher_revision


def check_pair(student_tokenizer, config) -> str:
    """Both tokenizers load and are fast (offsets); returns the line the plugin logs once."""
    backend_json(student_tokenizer)
    teacher_tokenizer = load_teacher_tokenizer(*teacher_tokenizer_path(config))
    difference = tokenizer_difference(student_tokenizer, teacher_tokenizer)
    templates = "same chat template" if teacher_tokenizer.chat_template in (None, student_tokenizer.chat_template) \
        else "teacher uses its own chat template"
    state = f"tokenizers differ ({difference.split(';')[0]})" if difference else "tokenizers are identical"
    return f"{state}, alignment in use (cross_tokenizer {config.cross_tokenizer}, {templates})"


def aligned_teacher_source(config, student_tokenizer, teacher, device):
    """The ``AlignedTeacherSource`` of a loaded teacher model (the first-byte classes for ``hybrid``)."""
    from ..teachers import AlignedTeacherSource

    teacher_tokenizer = load_teacher_tokenizer(*teacher_tokenizer_path(config))
    classes = next_byte_classes(student_tokenizer, teacher_tokenizer) if config.cross_tokenizer == "hybrid" else None
    return AlignedTeacherSource(teacher, len(teacher_tokenizer), len(student_tokenizer), classes, device=device)
