"""The fault tests reuse the teacher-server helpers of ``tests/teachers`` (``served_teacher``); one
served tiny teacher (faults set per test) and one offline store serve all of them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teachers"))


@pytest.fixture(scope="session")
def teacher_url(tiny_pair):
    from served_teacher import serve
    from train_runs import K, MODEL

    with serve(tiny_pair[0], "--served-model-name", MODEL, "--max-logprobs", str(K)) as base:
        yield base


@pytest.fixture(scope="session")
def stored_logits(tiny_pair, arithmetic_data, tmp_path_factory):
    from train_runs import capture_store

    return capture_store(tiny_pair, arithmetic_data, tmp_path_factory.mktemp("stored") / "logits")


@pytest.fixture
def source_extra(request):
    """What ``train_runs.make_trainer`` needs beside the kind: the served URL, the store, or None."""

    def extra(kind):
        name = {"served": "teacher_url", "stored": "stored_logits"}.get(kind)
        value = request.getfixturevalue(name) if name else None
        if kind == "served":
            from served_teacher import set_faults

            set_faults(value)  # none left over from another test
        return value

    return extra
