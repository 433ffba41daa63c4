"""A small real filesystem for full-disk tests: a tmpfs mounted for the test (root only; the test is
skipped where mounting is not permitted), and ``fill`` to take its free space as another writer would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(size_kb: int):
    """A tmpfs of ``size_kb`` kB (skips the test where ``mount`` is not permitted)."""
    where = Path(tempfile.mkdtemp(prefix="smallfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(path: Path, leave: int = 0) -> None:
    """Write ``path`` until the filesystem has at most ``leave`` bytes free (another writer filling it)."""
    with open(path, "wb") as f:
        try:
            while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
