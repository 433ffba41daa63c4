"""Multi-process (gloo) runs on a machine without a usable CUDA device, under either torch build.

Axolotl assumes an accelerator per rank in two places. Both are corrected only when
``torch.cuda.is_available()`` is False, whatever the Axolotl release or torch build:

- ``load_cfg`` probes NCCL peer-to-peer with ``torch.cuda.can_device_access_peer`` once
  WORLD_SIZE > 1. A CPU build of torch raises AssertionError there, which Axolotl catches; a CUDA
  build on a machine without a driver raises RuntimeError ("Found no NVIDIA driver"), which it does
  not. Without CUDA devices there is no NCCL peer-to-peer to probe: the answer is the CPU build's.
- the model loader maps each rank to the device ``{"": LOCAL_RANK}``, an accelerator index.
- with FSDP (``fsdp_version: 2``), Axolotl builds its device mesh with ``build_device_mesh("cuda")``,
  which calls ``torch.cuda.set_device``; without CUDA the mesh is a CPU (gloo) mesh instead.
- Accelerate turns FSDP on only for accelerator process groups (MULTI_GPU, ...): on CPU
  (MULTI_CPU) an FSDP config is silently ignored and the run is plain data parallel. Without CUDA
  an FSDP2 request makes the state FSDP, so ``fully_shard`` really shards over the gloo group
  (the test suite's FSDP2 runs depend on it; torch's FSDP2 itself runs on CPU).
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


def build_meshes_on_cpu() -> None:
    """Without CUDA, Accelerate's ``ParallelismConfig.build_device_mesh("cuda")`` builds a CPU mesh."""
    if torch.cuda.is_available():
        return
    from accelerate.parallelism_config import ParallelismConfig

    build = ParallelismConfig.build_device_mesh
    if getattr(build, "distill_plugin_cpu", False):
        return

    def on_cpu(self, device_type: str):
        return build(self, "cpu" if device_type == "cuda" else device_type)

    on_cpu.distill_plugin_cpu = True
    ParallelismConfig.build_device_mesh = on_cpu


def fsdp2_on_cpu() -> None:
    """Without CUDA, Accelerate honours an FSDP2 request (``ACCELERATE_USE_FSDP`` + ``FSDP_VERSION=2``)
    for a multi-process CPU run instead of dropping it."""
    if torch.cuda.is_available():
        return
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "distill_plugin_cpu", False):
        return

    def init_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # Every later AcceleratorState() copies PartialState's MULTI_CPU back in: re-apply each time.
        plugin = fsdp_plugin or self.__dict__.get("fsdp_plugin")
        if getattr(plugin, "fsdp_version", 1) == 2 and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    init_with_fsdp.distill_plugin_cpu = True
    AcceleratorState.__init__ = init_with_fsdp
