"""Free space for long-running writers: an estimate checked before writing, a full disk in one line.

``estimate_bytes(units, bytes_per_unit)`` sizes an output from a count (captured positions, tokens)
and a size per unit measured on the first output; ``check_room`` refuses, before anything is
written, when the target filesystem cannot hold it (``DiskFullError``). A write that still hits a
full disk (``ENOSPC``, or another writer filled it meanwhile) is reported by the writer as the same
``DiskFullError``: one line naming the path, the free space and the estimate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

MARGIN = 1.10  # the estimate plus 10 %: Parquet/JSON overhead varies with the rows


def human(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem of ``path`` (its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(err: BaseException) -> bool:
    """``ENOSPC``/``EDQUOT``, including pyarrow's ``OSError`` whose errno is only in its message."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


class DiskFullError(OSError):
    """The output's filesystem is (or would be) full; its message is one line."""

    def __init__(self, path: str | os.PathLike, estimated: int | None = None, needed: int | None = None,
                 before: bool = False):
        free = free_bytes(path)
        if before:
            message = (f"{path}: {human(free)} free, but this run's output is estimated at {human(needed)} "
                       f"(store total {human(estimated)}); free space or write to another filesystem, then run again")
        else:
            message = (f"{path}: no space left on device ({human(free)} free; the output is estimated at "
                       f"{human(estimated)}); the file being written was removed, what was complete is kept: "
                       f"free space and run the same command again to resume")
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.free, self.estimated = free, estimated


def estimate_bytes(units: int, bytes_per_unit: float, fixed: int = 0) -> int:
    return int((units * bytes_per_unit + fixed) * MARGIN)


def check_room(path: str | os.PathLike, needed: int, store_total: int | None = None) -> None:
    """Raise ``DiskFullError`` when ``needed`` more bytes do not fit on the filesystem of ``path``."""
    if needed > free_bytes(path):
        raise DiskFullError(path, store_total if store_total is not None else needed, needed, before=True)


@contextlib.contextmanager
def removed_on_failure(tmp: str | os.PathLike, where: str | os.PathLike, estimated: int | None = None):
    """Around the writing of ``tmp`` (later renamed into place): on an ``OSError`` ``tmp`` is removed,
    and a full disk is raised as ``DiskFullError`` naming ``where``."""
    try:
        yield
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFullError(where, estimated) from None
        raise
