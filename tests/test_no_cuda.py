"""Multi-process runs without a usable CUDA device (gloo): Axolotl's config step and device map.

The end-to-end run is tests/test_e2e_axolotl.py::test_two_processes_match_one; this is its fast
regression test. With a CPU build of torch Axolotl's own code already copes with the probe; with a
CUDA build and no driver (the py312 stack's torch from PyPI here) it fails without the plugin.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")


@pytest.fixture
def rank_one_of_two(monkeypatch):
    saved = dict(os.environ)  # Axolotl's config step sets environment variables
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_config_step_of_a_rank_without_cuda(rank_one_of_two):
    """Regression: load_cfg's NCCL peer-to-peer probe raised "Found no NVIDIA driver" on each rank."""
    from axolotl.utils.config import prepare_plugins
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.trainer import prepare_optim_env

    cfg = DictDefault({"plugins": ["distill_plugin.DistillPlugin"], "distill": {"teacher": "some/teacher"}})
    prepare_plugins(cfg)  # as load_cfg does, before prepare_optim_env
    prepare_optim_env(cfg)
    assert "NCCL_P2P_DISABLE" not in os.environ  # the CPU build's answer: nothing for NCCL to disable


def test_rank_device_becomes_cpu():
    from distill_plugin.no_cuda import map_ranks_to_cpu

    device_map = {"": 1}
    map_ranks_to_cpu(device_map)
    assert device_map == {"": "cpu"}
