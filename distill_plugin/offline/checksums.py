"""Per-part checksums of an offline store: recorded in ``meta.json`` at capture, verified before use.

``meta.json`` keys written here (next to the ``StoreMeta`` fields, which ignore them):

* ``checksums``: ``{part file name: {"sha256": hex digest, "bytes": size}}``, one entry per part,
  recorded (under an ``flock`` on ``meta.json.lock``, so shards capturing into one directory do not
  lose each other's entries) after the part's ``*.tmp`` is complete and before it is renamed into
  place: a part on disk under its final name always has its entry.
* ``recapture``: ``{part prefix "part-sIIIofNNN-": command}``, the command that captured that
  shard's parts (``distill-data logits`` records its own command line). Deleting a part and running
  it again re-captures that part's rows only: resume skips the rows the shard's other parts hold.

``verify_store`` hashes every part (in threads, with a progress bar for stores of ``PROGRESS_BYTES``
or more) and raises ``CorruptStoreError`` whose message is one line naming the file and the command
that re-captures it. Parts without an entry (a store written before checksums were recorded) are
not refused: they are counted in ``StoreCheck.unrecorded`` and reported by ``unrecorded_warning``.
A file verified once in a process (by path, size and mtime) is not hashed again by that process or
by processes it forks (DataLoader workers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CHECKSUMS_KEY = "checksums"
RECAPTURE_KEY = "recapture"
SIDE_KEYS = (CHECKSUMS_KEY, RECAPTURE_KEY)
PROGRESS_BYTES = 1 << 30
_CHUNK = 1 << 22
_VERIFIED: set[tuple[str, int, int]] = set()


class CorruptStoreError(ValueError):
    """A part of an offline store differs from the checksum recorded when it was written."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def part_prefix(name: str) -> str:
    """``part-s000of001-`` of ``part-s000of001-000002.parquet`` (the shard that wrote it)."""
    return name[: name.rindex("-") + 1] if name.count("-") >= 2 else name


@contextlib.contextmanager
def _locked(root: Path):
    import fcntl

    with open(root / "meta.json.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_meta_dict(root: str | os.PathLike) -> dict:
    return json.loads((Path(root) / "meta.json").read_text())


def write_meta_dict(root: Path, data: dict) -> None:
    """Replace ``meta.json`` atomically; the temporary file is removed if the write fails (full disk)."""
    tmp = root / f"meta.json.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, root / "meta.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_part(root: str | os.PathLike, written: str | os.PathLike, name: str, command: str | None = None) -> None:
    """Record the checksum of ``written`` (a complete ``*.tmp``) under the part ``name`` it becomes.

    Entries of the same shard whose part no longer exists (deleted to be re-captured) are dropped.
    """
    root = Path(root)
    entry = {"sha256": file_sha256(written), "bytes": os.path.getsize(written)}
    prefix = part_prefix(name)
    with _locked(root):
        data = read_meta_dict(root)
        sums = data.setdefault(CHECKSUMS_KEY, {})
        for old in [n for n in sums if n.startswith(prefix) and n != name and not (root / n).exists()]:
            del sums[old]
        sums[name] = entry
        if command:
            data.setdefault(RECAPTURE_KEY, {})[prefix] = command
        write_meta_dict(root, data)


def recapture_command(root: Path, name: str, recorded: dict) -> str:
    prefix = part_prefix(name)
    command = recorded.get(RECAPTURE_KEY, {}).get(prefix)
    if command is None:
        shard = prefix.removeprefix("part-s").rstrip("-").replace("of", "/")
        i, _, n = shard.partition("/")
        shard = f"{int(i)}/{int(n)}" if i.isdigit() and n.isdigit() else shard
        command = f"distill-data logits <the capture's data and options> -o {shlex.quote(str(root))} --shard {shard}"
    return f"rm {shlex.quote(str(root / name))} && {command}"


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def verify_part(root: str | os.PathLike, name: str, recorded: dict | None = None) -> bool:
    """Check one part against its recorded checksum; False when none is recorded.

    Raises ``CorruptStoreError`` (one line: the file, what differs, the command re-capturing it)."""
    root = Path(root).absolute()
    recorded = read_meta_dict(root) if recorded is None else recorded
    entry = recorded.get(CHECKSUMS_KEY, {}).get(name)
    if entry is None:
        return False
    path = root / name
    key = _key(path)
    if key in _VERIFIED:
        return True
    size = key[1]
    if size != entry["bytes"]:
        what = f"{size} bytes where {entry['bytes']} were written (truncated or partly copied?)"
    else:
        actual = file_sha256(path)
        if actual == entry["sha256"]:
            _VERIFIED.add(key)
            return True
        what = f"sha256 {actual[:12]}… differs from {entry['sha256'][:12]}… recorded at capture"
    raise CorruptStoreError(f"{path}: corrupt offline logits part ({what}); re-capture only this part: "
                            f"{recapture_command(root, name, recorded)}")


@dataclass
class StoreCheck:
    verified: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    bytes: int = 0


def verify_store(root: str | os.PathLike, workers: int | None = None, progress: bool | None = None,
                 prefix: str = "part-") -> StoreCheck:
    """Verify every part of the store at ``root`` whose name starts with ``prefix`` (default: all; a
    shard's ``part-sIIIofNNN-``); raise ``CorruptStoreError`` for the first corrupt one (in part order),
    naming how many others are corrupt too. ``progress``: default, stores of ``PROGRESS_BYTES`` or more."""
    root = Path(root).absolute()
    recorded = read_meta_dict(root)
    parts = sorted(p.name for p in root.glob(f"{prefix}*.parquet"))
    check = StoreCheck(bytes=sum((root / n).stat().st_size for n in parts))
    if progress is None:
        progress = check.bytes >= PROGRESS_BYTES
    workers = workers or min(8, os.cpu_count() or 1)
    errors: dict[str, CorruptStoreError] = {}

    def one(name: str) -> tuple[str, bool]:
        try:
            return name, verify_part(root, name, recorded)
        except CorruptStoreError as err:
            errors[name] = err
            return name, True

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=check.bytes, unit="B", unit_scale=True, desc=f"verify {root.name}", disable=not progress) as bar:
        for name, had_entry in pool.map(one, parts):
            (check.verified if had_entry else check.unrecorded).append(name)
            bar.update((root / name).stat().st_size)
    if errors:
        first = errors[min(errors)]
        others = sorted(errors)[1:]
        listed = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        more = f" ({len(others)} more corrupt part(s): {listed})" if others else ""
        raise CorruptStoreError(str(first) + more)
    return check


def unrecorded_warning(root: str | os.PathLike, check: StoreCheck) -> str | None:
    """The warning for parts that carry no checksum (written before checksums were recorded), or None."""
    if not check.unrecorded:
        return None
    total = len(check.unrecorded) + len(check.verified)
    return (f"offline logits store {root} carries no checksums for {len(check.unrecorded)} of its {total} part(s) "
            f"(written before checksums were recorded): corruption there cannot be detected; re-capture into a "
            f"new directory to have every part checked")
