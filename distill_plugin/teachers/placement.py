"""Where an online teacher lives when the student is trained by several processes
(``distill.teacher_placement``), and which placements each training engine allows.

    replicate   a whole frozen copy in every process (the default; the only choice with DeepSpeed)
    shard       FSDP2 over all processes (``fully_shard`` per decoder layer, resharded after each
                layer's forward): a rank holds 1/world of the decoder weights and all-gathers one
                layer at a time during the teacher forward. Embeddings, final norm and lm_head stay
                whole on every rank, because the fused loss reads the teacher head outside any
                teacher forward (a 32B teacher: ~1.6 B of its 32.8 B parameters). Every rank must
                run the teacher the same number of times — it does: one forward per micro-batch.
    device_map  one process: ``from_pretrained(device_map="auto")`` spreads the layers over every
                visible GPU (pipeline without overlap); rows and lm_head reach the student's device

Engines (``engine_of``, from the raw Axolotl config): ``ddp`` (one process or plain DDP),
``fsdp2``, ``fsdp1`` (refused: the loss redirection is tested with FSDP2 only), ``zero0``..``zero3``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PLACEMENTS = ("replicate", "shard", "device_map")


def deepspeed_stage(value) -> int:
    """ZeRO stage of Axolotl's ``deepspeed:`` value (a JSON path or a dict); OSError/ValueError if unreadable."""
    if isinstance(value, (str, os.PathLike)):
        value = json.loads(Path(value).read_text())
    return int((value.get("zero_optimization") or {}).get("stage", 0)) if isinstance(value, dict) else 0


def engine_of(cfg: dict) -> str:
    """``fsdp2``, ``fsdp1``, ``zero<stage>`` or ``ddp`` for an Axolotl config (raw or validated)."""
    fsdp_config = cfg.get("fsdp_config") or {}
    if cfg.get("fsdp") or fsdp_config or cfg.get("fsdp_version"):
        version = cfg.get("fsdp_version") or (fsdp_config.get("fsdp_version") if isinstance(fsdp_config, dict) else None)
        return "fsdp2" if str(version) == "2" else "fsdp1"
    if cfg.get("deepspeed"):
        return f"zero{deepspeed_stage(cfg['deepspeed'])}"
    return "ddp"


def world_size() -> int:
    """Processes of this run: the launcher's WORLD_SIZE (torchrun / accelerate launch set it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def placement_error(placement: str, processes: int, engine: str = "ddp") -> str | None:
    """Why ``placement`` cannot work over ``processes`` processes with ``engine``, or None."""
    if placement == "shard":
        if processes < 2:
            return ("`teacher_placement: shard` splits the teacher over the processes of the run, and this run has one; "
                    "launch several (`accelerate launch --num_processes N`) or use `device_map` to spread it over this process's GPUs")
        if engine.startswith("zero"):  # untested: DeepSpeed does not run on this project's CPU machines
            return ("`teacher_placement: shard` (FSDP2) is not available under DeepSpeed; use an FSDP2 student "
                    "(`fsdp_version: 2`), or `replicate` with a 4-bit teacher (`teacher_load_in_4bit`)")
    if placement == "device_map" and processes > 1:
        return (f"`teacher_placement: device_map` spreads one teacher over every GPU of one process, but this run has "
                f"{processes} processes (each would claim all GPUs); use `shard` instead")
    return None


def shard_teacher(model, device):
    """FSDP2-shard a frozen teacher's decoder layers over all processes; the rest moves whole to ``device``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..hidden.capture import decoder_layers

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        raise ValueError("distill.teacher_placement: shard needs a process group of 2 or more processes (torchrun / accelerate launch)")
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):  # layer by layer: one full layer at a time on the device
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    return model.to(device)
