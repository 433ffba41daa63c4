"""Fixtures for the offline-logits tests: a briefly trained tiny teacher and chat data."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """The tiny teacher trained for a few seconds on text (a real LM's peaked outputs, V = 362)."""
    from distill_plugin.testing.synthetic import train_tiny_teacher

    return train_tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=40)


@pytest.fixture(scope="session")
def tokenizer(teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(teacher_dir))


@pytest.fixture(scope="session")
def teacher(teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(teacher_dir)).eval()


@pytest.fixture(scope="session")
def chat_rows():
    words = ["fox", "dog", "teacher", "student", "token", "model"]
    return [
        {"id": f"row{i}", "messages": [
            {"role": "user", "content": f"Tell me about the {words[i % 6]} number {i}."},
            {"role": "assistant", "content": f"The {words[(i + 1) % 6]} jumps over the lazy {words[i % 6]} {i} times."},
        ]}
        for i in range(12)
    ]


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory, chat_rows):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in chat_rows) + "\n")
    return path
