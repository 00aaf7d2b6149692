"""Unprivileged user ids for sandboxed programs, and killing everything such a user runs.

When the evaluator runs as root, each concurrently running program gets a user id of its own that
nothing else on the machine uses: it cannot touch the user's files (it owns only its working
directory), cannot signal the evaluator or other programs, ``RLIMIT_NPROC`` caps the processes of
that one program (root ignores the limit), and afterwards every process it left behind is found and
killed by user id, even ones that left the process group.
"""
from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import threading
import time

log = logging.getLogger(__name__)

_PREFERRED_BASE = 1_700_000_000  # far above any account number a system hands out
_lock = threading.Lock()
_in_use: set[int] = set()
_verified: set[int] = set()
_tainted: set[int] = set()


def _mapped_ranges() -> list[tuple[int, int]]:
    """User ids this process can switch to (its user namespace's map), as [start, end)."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [(int(a), int(a) + int(n)) for a, _b, n in (line.split() for line in f)]
    except OSError:
        ranges = [(0, 65536)]
    return ranges or [(0, 65536)]


def _base_uid() -> int:
    ranges = _mapped_ranges()
    if any(lo <= _PREFERRED_BASE and _PREFERRED_BASE + 100_000 <= hi for lo, hi in ranges):
        return _PREFERRED_BASE
    lo, hi = max(ranges, key=lambda r: r[1] - r[0])
    return max(lo + 1000, hi - 20_000)


def processes_of(uid: int) -> list[int]:
    """Pids whose real user id is ``uid`` (read from /proc/PID/status, which stays accurate for
    non-dumpable processes whose /proc entry is owned by root)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            pass
    return pids


def _uid_is_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        return not processes_of(uid)


def acquire_uid() -> int:
    """A user id no account and no running process uses, reserved until ``release_uid``."""
    with _lock:
        uid = _base_uid()
        while uid in _in_use or uid in _tainted or (uid not in _verified and not _uid_is_free(uid)):
            uid += 1
        _in_use.add(uid)
        _verified.add(uid)
        return uid


def release_uid(uid: int) -> None:
    """Kill whatever ``uid`` still runs, then make it available again (never if something survived)."""
    survivors = kill_all_of(uid)
    with _lock:
        _in_use.discard(uid)
        if survivors:
            _tainted.add(uid)
            log.warning("sandbox user %d still has processes %s; not reusing it", uid, survivors)


def _kill_command(uid: int) -> list[str]:
    # The shell re-checks its own user id before kill(-1): sent by root, kill(-1) would hit every
    # process on the machine.
    return ["/bin/sh", "-c", f'[ "$(id -u)" = "{uid}" ] || exit 97; kill -9 -1 2>/dev/null; exit 0']


def kill_once(uid: int) -> None:
    """Send SIGKILL to every process of ``uid``: ``kill(-1)`` sent as that user reaches exactly its
    processes, in one system call, so a fork bomb cannot outrun it."""
    if uid < 1000:
        raise ValueError(f"refusing to kill all processes of system user {uid}")
    code = subprocess.run(_kill_command(uid), user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                          cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode
    if code == 97:
        raise RuntimeError(f"could not switch to sandbox user {uid} to clean up")


def kill_all_of(uid: int, deadline_s: float = 15.0) -> list[int]:
    """Kill every process of ``uid`` and wait until none is left (zombies count: they hold
    RLIMIT_NPROC slots until the init process reaps them, which can lag on a busy machine).
    Returns the pids left when the deadline passes (normally none)."""
    kill_once(uid)
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        left = processes_of(uid)
        if not left or time.monotonic() > deadline:
            return left
        if any(not _is_zombie(pid) for pid in left):
            kill_once(uid)
        attempt += 1
        time.sleep(min(0.002 * attempt, 0.05))


def kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _is_zombie(pid: int) -> bool:
    """True for a process that has exited and awaits reaping (or is already gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True
