"""Checkpoints under faults: a save that meets a full disk, a damaged checkpoint to resume from.

``save_or_stop(trainer, save, folder)``: ``save()`` writes ``folder`` (``checkpoint-N``, which the
Trainer writes in place, file by file). When the filesystem fills up meanwhile, the torn folder
(created by this save) is removed, so neither ``resume_from_checkpoint: true`` (the highest
``checkpoint-N``) nor Axolotl's ``auto_resume_from_checkpoints`` can pick it, and the run stops with
one line naming the output directory, its free space and the checkpoint to resume from; exit code 2.
torch's zip writer reports a full disk as an opaque ``RuntimeError`` ("unexpected pos ..."), so a
failed save with less than ``FULL_BELOW`` bytes free is taken for one too.

``check_checkpoint(folder)``: before a resume, the files the Trainer reads are structurally whole:
``trainer_state.json`` parses, every ``*.safetensors`` has a readable header whose tensors end
exactly at the end of the file, every torch file (``*.pt``, ``*.pth``, ``*.bin``: zip archives)
has its central directory and each member matches the CRC-32 torch recorded beside it (one read of
the optimizer state: bit rot there is found too). A safetensors payload carries no checksum: damage
inside the weights is not detected. What passes and still cannot be loaded is caught when the
Trainer loads it (``loading_or_stop``). Either stops with one line naming the file or folder, exit
code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path

from .errors import first_line
from .offline.diskspace import free_bytes, human, is_disk_full

FULL_BELOW = 16 << 20
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be what the Trainer saved; the message names the file."""


def stop(line: str, show: bool = True) -> None:
    """One ``distill_plugin: error:`` line on stderr (``show``: the main process), then exit code 2."""
    if show:
        print(f"distill_plugin: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def last_complete(run_dir: Path, but: Path) -> Path | None:
    """The highest ``checkpoint-N`` of ``run_dir`` other than ``but`` (None if there is none)."""
    found = [p for p in run_dir.glob("checkpoint-*") if p != but and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_or_stop(save, folder: str | os.PathLike, show: bool = True) -> None:
    """Run ``save()`` (which writes ``folder``); on a full disk remove what it wrote and stop (module docstring)."""
    folder = Path(folder)
    existed = folder.exists()  # saved again (an outage's stop at a scheduled step): never remove a whole one
    try:
        save()
    except Exception as err:
        free = free_bytes(folder)
        if not (is_disk_full(err) or free < FULL_BELOW):
            raise
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        previous = last_complete(folder.parent, folder)
        then = (f"resume from {previous} (`resume_from_checkpoint: {previous}`)" if previous is not None
                else "no earlier checkpoint exists: run again")
        stop(f"{folder.parent}: no space left on device while saving {folder.name}; the incomplete {folder.name} was "
             f"removed ({human(free_bytes(folder.parent))} free now); free space or set another output_dir, then {then}",
             show)


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Raise ``DamagedCheckpoint`` naming the first file of ``folder`` that is not whole (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DamagedCheckpoint(f"{folder}: no such checkpoint directory")
    state = folder / "trainer_state.json"
    if not state.is_file():
        raise DamagedCheckpoint(f"{state}: missing (the save of this checkpoint did not finish)")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        why = _damage(path)
        if why:
            raise DamagedCheckpoint(f"{path}: {why}")


def _damage(path: Path) -> str | None:
    size = path.stat().st_size
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            return f"not valid JSON ({first_line(err)})"
    elif path.suffix == ".safetensors":
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"truncated safetensors file ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"truncated or overwritten safetensors header (it claims {n} bytes, the file has {size})"
            try:
                header = json.loads(fh.read(n))
            except (ValueError, UnicodeDecodeError):
                return "unreadable safetensors header (overwritten)"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            return f"truncated safetensors file ({size} bytes, its header describes {8 + n + end})"
    elif path.suffix in TORCH_SUFFIXES and size:
        try:
            with zipfile.ZipFile(path) as archive:
                if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                    return "truncated torch file (a member ends past the end of the file)"
                damaged = archive.testzip()  # every member against the CRC-32 torch wrote beside it
                if damaged is not None:
                    return f"damaged torch file (member {damaged} does not match its CRC-32)"
        except zipfile.BadZipFile:
            with open(path, "rb") as fh:
                if fh.read(2) == b"PK":  # a zip archive without its central directory: cut short
                    return f"truncated torch file ({size} bytes, no zip central directory)"
    return None


@contextlib.contextmanager
def loading_or_stop(folder, show: bool = True):
    """Around the Trainer's loading of ``folder``: a file it cannot load stops the run in one line."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:
        stop(f"resume_from_checkpoint: {folder}: cannot be loaded ({type(err).__name__}: {first_line(err)}); "
             "resume from an earlier checkpoint-N or train from the start", show)
