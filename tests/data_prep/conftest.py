"""Fixtures for the data_prep tests (helpers live in dp_helpers.py: a module named ``conftest``
would collide with tests/conftest.py on ``from conftest import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dp_helpers import TRAINED, train_teacher, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return train_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    from distill_plugin.testing.tiny import build_model, build_tokenizer

    d = tmp_path_factory.mktemp("student")
    build_model(d, build_tokenizer(), hidden_size=32, seed=2)
    return d


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    """Trained prompts (one with a deliberately wrong gold), an unseen prompt, and bad lines."""
    rows = [{"problem": q, "answer": a} for q, _, a in TRAINED[:3]]
    rows.append({"problem": TRAINED[3][0], "answer": "3"})  # gold wrong on purpose -> incorrect
    rows.append({"problem": "Name a prime larger than 10.", "answer": "11"})  # unseen -> garbage
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


@pytest.fixture(scope="session")
def kd_root(tmp_path_factory) -> Path:
    """The recipes' tiny twin pair (``prepare_tiny_run``: teacher, student, ``student_sp`` on another
    tokenizer, ``data.jsonl``) and ``student_padded``: the student with lm_head padded to 320 rows."""
    from distill_plugin.testing.tiny import TWIN_PAIR, build_model, build_tokenizer, prepare_tiny_run

    root = prepare_tiny_run(tmp_path_factory.mktemp("kd"), examples=16)
    build_model(root / "student_padded", build_tokenizer(), vocab_pad_to=320, **TWIN_PAIR["student"])
    return root
