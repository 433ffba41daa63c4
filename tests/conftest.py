"""Shared fixtures: a locally built tiny tokenizer, teacher/student pairs and the arithmetic data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
# One intra-op thread, here and in every subprocess that inherits the environment: the tests' models
# are tiny (a 64-wide layer's matmul is microseconds), so a second thread only adds synchronisation,
# and on a busy machine (CI installs the second stack meanwhile) OpenMP's spinning threads contend
# for the cores: 30 steps of the 64-wide tiny teacher took 9.3 s with 2 threads, 1.1 s with 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before the variable


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A tiny teacher (hidden 48) and student (hidden 32) sharing the tiny tokenizer."""
    from distill_plugin.testing.tiny import build_pair

    return build_pair(tmp_path_factory.mktemp("pair"), teacher_hidden=48, student_hidden=32)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory):
    from distill_plugin.testing.addition import make_split
    from distill_plugin.jsonl import write_jsonl_atomic

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl_atomic(path, make_split(48, seed=0))
    return path




@pytest.fixture(scope="session")
def cross_pair(tmp_path_factory):
    """A tiny teacher (hidden 48) on the byte-level tokenizer and a tiny student (hidden 32) on the
    SentencePiece-style one (cross-tokenizer KD)."""
    from distill_plugin.testing.tiny import build_cross_pair

    return build_cross_pair(tmp_path_factory.mktemp("cross"), teacher_hidden=48, student_hidden=32)


@pytest.fixture(scope="session")
def twin_root(tmp_path_factory):
    """What every recipe's tiny twin trains on (``distill_plugin.testing.twins``), built once: the
    twin pair (``tiny.TWIN_PAIR``), the addition chats, and one prepared-data directory they share."""
    from distill_plugin.testing.tiny import prepare_tiny_run

    return prepare_tiny_run(tmp_path_factory.mktemp("twins"))


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """A handler bound to a stream that a finished test closed (Axolotl's logging set-up binds one to the
    ``sys.stderr`` of the moment, e.g. a CLI runner's) would print "--- Logging error ---" tracebacks
    into later tests' output; drop such handlers before each test."""
    import logging

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
    yield
