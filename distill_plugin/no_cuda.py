"""Multi-process (gloo) runs on a machine without a usable CUDA device, under either torch build.

Axolotl assumes an accelerator per rank in two places. Both are corrected only when
``torch.cuda.is_available()`` is False, whatever the Axolotl release or torch build:

- ``load_cfg`` probes NCCL peer-to-peer with ``torch.cuda.can_device_access_peer`` once
  WORLD_SIZE > 1. A CPU build of torch raises AssertionError there, which Axolotl catches; a CUDA
  build on a machine without a driver raises RuntimeError ("Found no NVIDIA driver"), which it does
  not. Without CUDA devices there is no NCCL peer-to-peer to probe: the answer is the CPU build's.
- the model loader maps each rank to the device ``{"": LOCAL_RANK}``, an accelerator index.
"""

from __future__ import annotations

import torch


def skip_cuda_p2p_probe() -> None:
    """Without CUDA, Axolotl's peer-to-peer probe answers "supported" (nothing for NCCL to disable)."""
    if torch.cuda.is_available():
        return
    import axolotl.utils.trainer as trainer_utils

    if hasattr(trainer_utils, "check_cuda_p2p_ib_support"):
        trainer_utils.check_cuda_p2p_ib_support = lambda: True


def map_ranks_to_cpu(device_map) -> None:
    """Without CUDA, accelerator indices in Axolotl's device_map become "cpu" (edited in place: the
    loader already holds this dict)."""
    if isinstance(device_map, dict) and not torch.cuda.is_available():
        for key, value in device_map.items():
            if isinstance(value, int):
                device_map[key] = "cpu"
