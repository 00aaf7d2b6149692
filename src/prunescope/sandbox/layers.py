"""Which isolation layers this host allows, and how many programs it can run at once.

The sandbox stacks four layers, each applied where the host allows it:

- ``uid``: a separate, unused user id per program (needs root: CAP_SETUID);
- ``netns``: a network namespace with no interfaces (as root with CAP_SYS_ADMIN, or through an
  unprivileged user namespace);
- ``landlock``: files readable only in the Python installation and system libraries, writable only in
  the working directory; TCP and signals out refused (Linux 5.13+, no privileges needed);
- ``seccomp``: inet/packet sockets, exec, ptrace, mount, unshare and signals outside the process
  group refused, and new processes too while the program still runs as root (RLIMIT_NPROC does not
  bind root) (``pip install pyseccomp`` and libseccomp2; no privileges needed).

A layer the host lacks is skipped, never fatal: ``isolation()`` probes once by running a small
program with every layer the host might allow, records which ones were applied, and logs one warning
naming the missing ones. Every later program must get the same layers, or it is refused.
``PRUNESCOPE_SANDBOX_DISABLE=uid,netns,landlock,seccomp`` turns layers off (to reproduce a host
that lacks them).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from functools import lru_cache

log = logging.getLogger(__name__)

LAYERS = ("uid", "netns", "landlock", "seccomp")
DISABLE_ENV = "PRUNESCOPE_SANDBOX_DISABLE"
PROTECTS = {"uid": "a separate user id (run as root to get it)",
            "netns": "no network (a network namespace: root with CAP_SYS_ADMIN or unprivileged user namespaces)",
            "landlock": "file-system confinement (Landlock, Linux 5.13+)",
            "seccomp": "system-call filtering (pip install pyseccomp; libseccomp2)"}


def disabled_layers() -> frozenset[str]:
    """Layers turned off through ``PRUNESCOPE_SANDBOX_DISABLE`` (comma-separated)."""
    names = {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}
    unknown = names - set(LAYERS)
    if unknown:
        raise ValueError(f"{DISABLE_ENV} names unknown layers {sorted(unknown)}; use any of {', '.join(LAYERS)}")
    return frozenset(names)


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    import sys
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    from prunescope.sandbox import worker  # the same probe the worker runs before confining itself

    return worker.landlock_abi(ctypes, ctypes.CDLL(None, use_errno=True))


@lru_cache(maxsize=1)
def seccomp_path() -> str | None:
    """The directory holding ``pyseccomp`` (the worker imports it from there), or None when it or
    libseccomp is not installed."""
    spec = importlib.util.find_spec("pyseccomp")
    if spec is None or not spec.origin:
        return None
    try:
        import pyseccomp  # noqa: F401  (loads libseccomp.so.2; fails when the library is missing)
    except (ImportError, OSError):
        return None
    return os.path.dirname(spec.origin)


def can_switch_users() -> bool:
    """Root with the capabilities a separate user id needs: CAP_CHOWN (its directory), CAP_KILL
    (cleaning up), CAP_SETGID and CAP_SETUID."""
    if os.geteuid() != 0 or not hasattr(os, "setresuid"):
        return False
    try:
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return all(effective >> cap & 1 for cap in (0, 5, 6, 7))


def describe(applied: dict, missing: list[str]) -> str:
    """One line saying how programs are isolated, e.g. ``separate uid, network namespace (root), ...``."""
    parts = ["separate uid" if applied.get("uid") else "evaluator's uid"]
    if applied.get("netns"):
        parts.append(f"network namespace ({applied['netns']})")
    if applied.get("landlock"):
        parts.append(f"Landlock ABI {applied['landlock']}")
    if applied.get("seccomp"):
        parts.append("seccomp")
    parts.append("resource limits, audit hook")
    text = ", ".join(parts)
    return f"{text}; missing: {', '.join(missing)}" if missing else text


def _mem_available_mb() -> int:
    """Memory available to this process: MemAvailable, or the cgroup limit when lower."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) // 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = int(f.read().strip()) // (1 << 20)
            available = min(available, limit) if available else limit
        except (OSError, ValueError):
            pass
    return available or 4096


def plan_workers(requested: int | None, *, memory_mb: int, max_processes: int, disk_mb: int, base_dir: str) -> int:
    """How many programs run at once: the CPU count (or ``requested``), lowered so that the worst case
    of all of them together (``max_processes * memory_mb`` of address space and ``disk_mb`` of files
    each) stays within half of the available memory and half of the free disk."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    by_memory = _mem_available_mb() // 2 // (memory_mb * max_processes)
    by_disk = shutil.disk_usage(base_dir).free // 2 // (disk_mb << 20)
    return max(1, min(requested or cpus, by_memory, by_disk))


def sweep_marked(marker: str, rounds: int = 50) -> list[int]:
    """SIGKILL every process whose environment carries ``marker`` (each sandbox run's own), however it
    left the process group (``setsid`` daemons); returns the pids still alive after ``rounds`` passes."""
    import signal
    import time
    needle = marker.encode()
    left: list[int] = []
    for attempt in range(rounds):
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle not in f.read():
                        continue
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                        continue  # already dead, waiting to be reaped
                os.kill(int(entry), signal.SIGKILL)
                left.append(int(entry))
            except (OSError, IndexError):
                pass
        if not left:
            return []
        time.sleep(min(0.002 * (attempt + 1), 0.05))
    return left
