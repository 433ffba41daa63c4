"""Run untrusted (model-written) Python in a contained subprocess.

One call of :func:`run_python` = one fresh process in a fresh temporary working directory, with:

* **time**: a wall-clock timeout (the whole process group, and every process of the sandbox uid,
  is SIGKILLed when it expires) and ``RLIMIT_CPU``;
* **memory**: ``RLIMIT_AS`` (address space), so a large allocation fails with ``MemoryError``;
* **processes**: ``RLIMIT_NPROC`` against fork bombs. The kernel ignores it for root, so when the
  parent runs as root the child is dropped to a dedicated unprivileged uid (one per concurrent
  slot, claimed with a lock file) and every process of that uid is killed afterwards, which also
  catches children that escaped the process group with ``setsid``;
* **output**: stdout/stderr go to files capped by ``RLIMIT_FSIZE`` (a program printing without end
  dies with SIGXFSZ) and are read back truncated to ``max_output_bytes``;
* **environment**: a scrubbed ``env`` and ``python -I`` (no user site, no PYTHON* variables);
* **network**: a new, empty network namespace (``unshare(CLONE_NEWNET)``: only a down loopback
  exists), when the kernel lets us create one (root, or unprivileged user namespaces). Otherwise a
  Python-level prelude replaces ``socket.socket`` — a speed bump, not a wall (``_socket`` and
  ``ctypes`` get around it); :func:`isolation_level` says which one is active;
* **filesystem**: as root, the child gets a private mount namespace in which every writable mount
  is bind-remounted read-only except its working directory, then drops to the sandbox uid: writes
  anywhere else (``/tmp`` included) fail with EROFS/EACCES. Without root only the uid drop is
  missing, and writes outside the working directory are *not* prevented (documented in
  docs/data_prep.md).

This is defence in depth for benchmark-style code, not a security boundary against a determined
attacker with kernel exploits; run it in a disposable container/VM for untrusted data at scale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 32, 4096, 16384, 1 << 18
_SKIP_FSTYPES = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs",
                 "securityfs", "pstore", "bpf", "fusectl", "configfs", "hugetlbfs", "binfmt_misc"}
SANDBOX_UID_BASE = 61000
SANDBOX_SLOTS = 256
_SLOT_DIR = Path(tempfile.gettempdir()) / "distill_data_sandbox_slots"

# Python-level network block used only when no network namespace can be created.
_NET_PRELUDE = (
    "import socket as _s\n"
    "class _NoNet(_s.socket):\n"
    "    def __init__(self, *a, **k):\n"
    "        raise PermissionError('network disabled in sandbox')\n"
    "_s.socket = _NoNet\n"
    "_s.create_connection = lambda *a, **k: (_ for _ in ()).throw(PermissionError('network disabled'))\n"
    "del _s, _NoNet\n"
)


@dataclass
class Limits:
    """Resource limits for one sandboxed run."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    nproc: int = 32
    max_output_bytes: int = 1 << 20
    max_file_bytes: int = 16 << 20


@dataclass
class SandboxResult:
    """Outcome of one run. ``status``: ok | error | timeout | memory | output_limit | killed."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    isolation: dict = field(default_factory=dict)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def _mount(src, target, fstype, flags) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target} failed")


def _writable_mounts() -> list[str]:
    """Mount points (deepest last) of writable, real filesystems, from /proc/self/mountinfo."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        sep = parts.index("-")
        point, opts, fstype = parts[4], parts[5].split(","), parts[sep + 1]
        if "rw" in opts and fstype not in _SKIP_FSTYPES and not point.startswith(("/proc", "/sys")):
            points.append(point.replace("\\040", " "))
    return points


def _probe(flags: int) -> bool:
    """Can a child process unshare ``flags``? Checked once, in a throwaway fork."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _unshare(flags)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@lru_cache(maxsize=1)
def isolation_level() -> dict:
    """Which isolation mechanisms this machine supports (cached)."""
    root = os.geteuid() == 0
    if root and _probe(CLONE_NEWNET | CLONE_NEWNS):
        return {"network": "namespace", "filesystem": "read-only mounts + uid drop", "root": True,
                "uid_drop": True}
    if _probe(CLONE_NEWUSER | CLONE_NEWNET):
        return {"network": "namespace (user ns)", "filesystem": "cwd only (not enforced)",
                "root": root, "uid_drop": False, "userns": True}
    return {"network": "python prelude (weak)", "filesystem": "uid drop" if root else
            "cwd only (not enforced)", "root": root, "uid_drop": root}


_next_slot = 0


class _Slot:
    """An exclusive sandbox uid for the duration of one run (flock on a per-slot file)."""

    def __init__(self):
        global _next_slot
        _SLOT_DIR.mkdir(parents=True, exist_ok=True)
        _next_slot += 1  # round-robin, so a just-used uid (zombies draining) is not reused at once
        start = (os.getpid() * 7 + _next_slot) % SANDBOX_SLOTS
        for i in range(SANDBOX_SLOTS):
            n = (start + i) % SANDBOX_SLOTS
            fh = open(_SLOT_DIR / f"slot-{n}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self.fh, self.uid = fh, SANDBOX_UID_BASE + n
            return
        raise RuntimeError("no free sandbox slot")

    def release(self):
        self.fh.close()


def _kill_uid(uid: int, settle_s: float = 2.0) -> None:
    """SIGKILL every process owned by ``uid`` (repeat: a fork bomb may race us), then wait up to
    ``settle_s`` for their zombies to be reaped (zombies still count against RLIMIT_NPROC)."""
    deadline = time.monotonic() + settle_s
    while True:
        found = False
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                if pid_dir.stat().st_uid == uid:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                    found = True
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        if not found or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def _make_preexec(limits: Limits, workdir: str, iso: dict, uid: int | None):
    mounts = _writable_mounts() if iso.get("root") and iso["network"] == "namespace" else []

    def preexec():  # runs in the child between fork and exec: keep it simple
        os.setsid()
        if iso["network"] == "namespace":
            _unshare(CLONE_NEWNET | CLONE_NEWNS)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount(workdir, workdir, None, MS_BIND)  # its own mount: stays writable
            for point in mounts:
                if point != workdir:
                    try:  # MS_BIND|MS_REMOUNT changes this namespace's mount flags only
                        _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
                    except OSError:
                        pass
            os.chdir(workdir)  # re-enter through the writable bind mount
        elif iso["network"].startswith("namespace"):
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec


def run_python(code: str, stdin: str = "", limits: Limits | None = None,
               python: str | None = None) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox, feeding ``stdin``; never raises on its behaviour."""
    limits = limits or Limits()
    iso = isolation_level()
    slot = _Slot() if iso["uid_drop"] else None
    uid = slot.uid if slot else None
    workdir = tempfile.mkdtemp(prefix="sbx-")
    iodir = tempfile.mkdtemp(prefix="sbx-io-")  # outside workdir: read-only for the child
    try:
        prelude = "" if iso["network"].startswith("namespace") else _NET_PRELUDE
        Path(workdir, "main.py").write_text(prelude + code, encoding="utf-8")
        Path(iodir, "stdin").write_text(stdin, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(Path(workdir, "main.py"), uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [python or default_python(bool(iso["uid_drop"])), "-I", "main.py"]
        t0 = time.monotonic()
        with open(Path(iodir, "stdin"), "rb") as fin, open(Path(iodir, "out"), "wb") as fout, \
                open(Path(iodir, "err"), "wb") as ferr:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=fin, stdout=fout, stderr=ferr,
                                    preexec_fn=_make_preexec(limits, workdir, iso, uid),
                                    close_fds=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_tree(proc, uid)
            rc = None if timed_out else proc.returncode
        wall = time.monotonic() - t0
        out, t1 = _read_capped(Path(iodir, "out"), limits.max_output_bytes)
        err, t2 = _read_capped(Path(iodir, "err"), limits.max_output_bytes)
        status = _classify(rc, timed_out, err)
        if status == "ok" and (t1 or t2):
            status = "output_limit"
        return SandboxResult(status, rc, out, err, wall, t1 or t2, dict(iso))
    finally:
        if uid is not None:
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(iodir, ignore_errors=True)
        if slot:
            slot.release()


def _world_usable(path: str) -> bool:
    """Can an unprivileged uid execute ``path`` (every parent directory world-searchable)?"""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o005 == 0o005:
            return False
        return all(p.stat().st_mode & 0o001 for p in real.parents)
    except OSError:
        return False


@lru_cache(maxsize=4)
def default_python(uid_drop: bool) -> str:
    """The interpreter for sandboxed code: ours, or a system one the sandbox uid can run."""
    if not uid_drop or _world_usable(sys.executable):
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(cand) and _world_usable(cand):
            return cand
    raise RuntimeError("no python interpreter usable by the sandbox uid; pass python=...")


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:  # kill escaped descendants before reaping (their parent may be it)
        _kill_uid(uid, settle_s=0)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    if uid is not None:
        _kill_uid(uid)


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as fh:
        data = fh.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def _classify(rc: int | None, timed_out: bool, err: str) -> str:
    if timed_out:
        return "timeout"
    if rc == 0:
        return "ok"
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and not err.strip():
        return "timeout" if rc == -signal.SIGXCPU else "killed"
    if rc == -signal.SIGXCPU:
        return "timeout"
    if rc == -signal.SIGXFSZ or "[Errno 27] File too large" in err[-2000:]:
        return "output_limit"
    if "MemoryError" in err[-2000:]:
        return "memory"
    return "error"
