"""A teacher/student pair from an Axolotl recipe (or two paths), its held-out rows, and its models.

What ``doctor`` and ``tune-temperature`` read of a recipe: ``base_model`` (the student), the
``distill:`` block (validated by the plugin's own ``DistillConfig``: an unknown or misspelt key is a
one-line error), ``adapter`` / ``lora_r``, ``optimizer``, ``bf16``/``fp16``, and the
chat rows of ``test_datasets[0]`` (its first rows), else of ``datasets[0]`` (its last rows: Axolotl's
``val_set_size`` split is random and cannot be reproduced here, but before training any row is one
the student has not been trained on), read as local JSONL (``field_messages``, default ``messages``).
Paths in the recipe are taken relative to the working directory (as Axolotl does), else to the
recipe's folder.

Rows are scored the way ``distill-data evaluate --fit-on data`` scores them (``evaluate.scored``): the
prompt rendered with the student's chat template and its generation prompt, the final assistant
message as the completion (plus eos), so row t of the completion predicts its token t+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from distill_plugin.args import DistillConfig
from distill_plugin.evaluation import ScoredSequence
from distill_plugin.jsonl import InputError, SkipLog, read_jsonl

from .evaluate import scored


@dataclass
class Pair:
    """The student, the ``distill:`` settings and the recipe keys the checks read."""

    student: str
    distill: DistillConfig
    recipe: dict
    source: Path | None = None  # the recipe file (None: --teacher/--student)

    @property
    def online(self) -> bool:
        return self.distill.teacher is not None and self.distill.teacher_server is None

    def teacher_source(self) -> str:
        d = self.distill
        if d.teacher_server is not None:
            return f"served teacher {d.teacher_server.model} at {d.teacher_server.url}"
        if d.teacher_logits is not None and d.teacher is None:
            return f"offline top-k store {d.teacher_logits}"
        return f"online teacher {d.teacher}"


def _path(value: str, recipe: Path | None) -> Path:
    path = Path(value).expanduser()
    if path.exists() or path.is_absolute() or recipe is None:
        return path
    beside = recipe.parent / path
    return beside if beside.exists() else path


def read_recipe(path: str | Path) -> Pair:
    """The pair of an Axolotl YAML with a ``distill:`` block (one-line errors: file, key)."""
    path = Path(path)
    recipe = yaml.safe_load(path.read_text())  # a missing file: OSError naming it
    if not isinstance(recipe, dict) or not recipe.get("base_model"):
        raise InputError(f"{path}: not an Axolotl recipe (no base_model)")
    if not isinstance(recipe.get("distill"), dict):
        raise InputError(f"{path}: no `distill:` block (nothing to distil)")
    block = dict(recipe["distill"])
    for key in ("teacher", "teacher_logits", "teacher_tokenizer"):
        if isinstance(block.get(key), str):
            block[key] = str(_path(block[key], path))
    return Pair(str(_path(str(recipe["base_model"]), path)), DistillConfig(**block), recipe, path)


def pair_of(teacher: str, student: str, **distill) -> Pair:
    """A pair given by two model paths (no recipe): default ``distill:`` settings, T = 1."""
    return Pair(student, DistillConfig(teacher=teacher, **distill), {})


def heldout_sequences(pair: Pair, tokenizer, n: int) -> list[ScoredSequence]:
    """Up to ``n`` chat rows of the recipe's data as ``(prompt_ids, completion_ids)`` (module docstring)."""
    entries = pair.recipe.get("test_datasets") or pair.recipe.get("datasets") or []
    if not entries or not isinstance(entries[0], dict) or "path" not in entries[0]:
        raise InputError(f"{pair.source}: no `datasets[0].path` to take rows from")
    entry, held_out = entries[0], bool(pair.recipe.get("test_datasets"))
    data = _path(str(entry["path"]), pair.source)
    if not data.is_file():
        raise InputError(f"{data}: not a local JSONL file (the checks read the recipe's chat rows locally)")
    field = entry.get("field_messages", "messages")
    chats = [row[field] for _, row in read_jsonl(data, SkipLog(strict=True))
             if isinstance(row.get(field), list) and row[field] and row[field][-1].get("role") == "assistant"]
    chats = chats[:n] if held_out else chats[-n:]
    if not chats:
        raise InputError(f"{data}: no `{field}` row ending in an assistant turn")
    return [scored(tokenizer, chat[:-1], chat[-1]["content"], True) for chat in chats]


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_student(pair: Pair, device: str):
    from distill_plugin.generation import load_causal_lm

    return load_causal_lm(pair.student, device)


def load_online_teacher(pair: Pair, device: str):
    """The recipe's online teacher, loaded as training loads it (``teachers.load_teacher``: dtype,
    4/8-bit, attention; ``replicate`` placement here: one process)."""
    from distill_plugin.teachers import load_teacher

    settings = pair.distill.model_copy(update={"teacher_placement": "replicate", "teacher_device": None})
    return load_teacher(settings, device)
