"""What a stage checks before it writes anything (each failure is an :class:`InputError`, exit 2).

* :func:`check_paths`: the output is not an input, nor inside an input folder (it would overwrite
  the input, or be read back as input on the next run).
* :func:`check_inputs`: an input is JSON Lines, not one JSON array; the inputs are not all empty.
* :func:`record_settings`: each output folder keeps ``_settings.<stage>.json``, the settings that
  shaped it. A resumable stage (generate, verify) refuses to append to a folder written with other
  settings and shows the difference; filter and export rewrite their output, so they only record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .io import InputError, input_files


def check_paths(inputs: Iterable[str | Path], out: str | Path) -> None:
    """Refuse an output equal to an input, or inside an input folder."""
    target = Path(out).resolve()
    for given in inputs:
        src = Path(given).resolve()
        if target == src:
            raise InputError(f"{out}: the output is the input {given}; choose another output")
        if src.is_dir() and src in target.parents:
            raise InputError(f"{out}: the output is inside the input folder {given} (it would be read "
                             "back as input); choose another output")


def _first_byte(path: Path) -> bytes:
    """The first non-whitespace byte of ``path`` (``b""`` for an empty or blank file)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def check_inputs(files: list[Path]) -> None:
    """Refuse a file holding one JSON array, and inputs that are all empty."""
    firsts = [_first_byte(f) for f in files]
    for f, first in zip(files, firsts):
        if first == b"[":
            raise InputError(f"{f}: one JSON array, not JSON Lines (one object per line); "
                             f"convert it with: jq -c '.[]' {f}")
    if not any(firsts):
        what = f"{files[0]} is empty" if len(files) == 1 else f"all {len(files)} input files are empty"
        raise InputError(f"{what}: no rows to read")


def preflight(inputs: str | Path | Iterable[str | Path], out: str | Path) -> list[Path]:
    """All checks on inputs and output; returns the input files (see ``io.input_files``)."""
    given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = [f for p in given for f in input_files(p)]
    check_paths(given, out)
    check_inputs(files)
    return files


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(old: dict, new: dict) -> list[str]:
    """``key: old → new`` for every setting that differs (nested keys dotted)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {json.dumps(a.get(k))} → {json.dumps(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def record_settings(out_dir: str | Path, stage: str, settings: dict, resumable: bool) -> Path:
    """Write ``<out_dir>/_settings.<stage>.json``; for a resumable stage, first refuse to go on if
    the folder was written with other settings."""
    path = Path(out_dir) / f"_settings.{stage}.json"
    settings = json.loads(json.dumps(settings))  # tuples → lists etc., as read back
    if resumable and path.exists():
        diff = settings_diff(json.loads(path.read_text()), settings)
        if diff:
            raise InputError(f"{path}: {out_dir} was written with other {stage} settings ("
                             + "; ".join(diff) + "); resume with the same settings or use another output")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards may write it at the same time
    from distill_plugin.offline import removed_on_failure

    with removed_on_failure(tmp, path):
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return path


GENERATE_SETTINGS = {"backend", "model", "sampling", "prompt", "fields"}  # what shapes a generation


def prepare_generate(inputs, out_dir: str | Path, cfg) -> None:
    """The checks before ``generate`` (a ``GenerateConfig``) may append to ``out_dir``."""
    preflight(inputs, out_dir)
    record_settings(out_dir, "generate", cfg.model_dump(include=GENERATE_SETTINGS), resumable=True)
