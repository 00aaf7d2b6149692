"""Run untrusted, model-written Python programs safely and say why each one failed.

Each program runs in its own ``python -I -S`` process (standard library only) with:

- a wall-clock timeout, after which its whole process group is killed, and a CPU-time limit;
- limits on address space (``memory_mb``), processes (``max_processes``), file size
  (``max_file_mb``) and open files; no core dumps;
- a fresh temporary working directory, removed afterwards, and a scrubbed environment;
- no network: a new network namespace where the OS allows it, and sockets disabled in Python;
- when the evaluator runs as root: an unprivileged user id of its own (it can write only its
  directory, cannot signal anything else, and everything it leaves running is killed by user id),
  ``no_new_privs``, and the standard library bind-mounted read-only when it is not world-readable;
- where the kernel has Landlock (no privileges needed): writing, creating or removing files only
  beneath its working directory, no TCP, no signals to processes outside the sandbox;
- a guard that disables process creation, signals, file deletion/renaming/chmod and ctypes.

Not root and no Landlock: a program could still write wherever the evaluator's user can (the guard
stops the common ways); a warning says so once.

A program passes only when it runs to its end: the worker prints a random token after the last
statement, so ``os._exit(0)``, ``sys.exit(0)`` or being killed before the asserts ran all fail.

Failure classes follow Shrestha et al.: ``passed``, ``assertion``, ``bracket_syntax`` (a syntax error
about brackets: "was never closed", "unmatched", "does not match", "unexpected EOF"), ``syntax``
(any other SyntaxError/IndentationError), ``name_error`` (NameError, including UnboundLocalError),
``timeout`` (wall or CPU limit), plus ``memory`` (MemoryError), ``killed`` (ended by a signal) and
``other``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prunescope.eval import sandbox_users
from prunescope.eval.sandbox_io import read_until_exit

log = logging.getLogger(__name__)

STATUSES = ("passed", "assertion", "bracket_syntax", "syntax", "name_error", "timeout", "memory", "killed", "other")
WORKER = Path(__file__).with_name("sandbox_worker.py")
MAX_OPEN_FILES = 64
BRACKET_MESSAGES = ("was never closed", "unmatched", "does not match", "unexpected eof", "closing parenthesis")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Iteration))(?::\s?(.*))?$")


@dataclass
class SandboxResult:
    """Outcome of one program: ``status`` is one of ``STATUSES``; ``reason`` is one line;
    ``stdout``/``stderr`` are truncated in the middle when long; ``returncode`` is negative for a
    signal and None when the process could not be started; ``duration`` is wall seconds."""
    passed: bool
    status: str
    reason: str
    stdout: str
    stderr: str
    returncode: int | None
    duration: float


def _last_exception(stderr: str) -> tuple[str, str] | None:
    """(exception name, message) from the final unindented ``Name: message`` line of a traceback."""
    for line in reversed(stderr.rstrip().splitlines()):
        match = _EXCEPTION_LINE.match(line.rstrip())
        if match:
            return match.group(1), (match.group(2) or "").strip()
    return None


def classify_failure(stderr: str, returncode: int | None, timed_out: bool) -> str:
    """The failure class of a program that did not pass, from its stderr, exit code and whether it
    ran out of time. Never returns ``passed``."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    exception = _last_exception(stderr or "")
    if exception:
        name, message = exception
        if name == "AssertionError":
            return "assertion"
        if name in ("SyntaxError", "IndentationError", "TabError"):
            lowered = message.lower()
            return "bracket_syntax" if any(m in lowered for m in BRACKET_MESSAGES) else "syntax"
        if name in ("NameError", "UnboundLocalError"):
            return "name_error"
        if name == "MemoryError":
            return "memory"
    if returncode is not None and returncode < 0:
        return "killed"
    return "other"


def _reason(status: str, stderr: str, returncode: int | None, timeout: float) -> str:
    if status == "timeout":
        return f"timed out (limit {timeout:g} s wall, {_cpu_seconds(timeout)} s CPU)"
    exception = _last_exception(stderr)
    if exception:
        text = f"{exception[0]}: {exception[1]}" if exception[1] else exception[0]
    elif returncode is not None and returncode < 0:
        try:
            text = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            text = f"killed by signal {-returncode}"
    elif returncode == 0:
        text = "exited with status 0 before the program finished"
    elif returncode is None:
        text = "could not start"
    else:
        text = f"exited with status {returncode} before the program finished"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _cpu_seconds(timeout: float) -> int:
    return int(timeout) + 1


@lru_cache(maxsize=1)
def _stdlib_world_readable() -> bool:
    """Whether an unprivileged user can import the standard library where it is installed."""
    path = Path(os.path.dirname(os.__file__)).resolve()
    for directory in [*reversed(path.parents), path]:
        mode = directory.stat().st_mode
        if not mode & 0o001 or (directory == path and not mode & 0o004):
            return False
    return True


def _config(uid, stdlib_mount, *, timeout, memory_mb, max_processes, max_file_mb, guard) -> dict:
    return {"uid": uid, "stdlib_mount": stdlib_mount, "network_isolation": True,
            "cpu_seconds": _cpu_seconds(timeout), "memory_mb": memory_mb, "max_processes": max_processes,
            "max_file_mb": max_file_mb, "max_open_files": MAX_OPEN_FILES, "guard": guard}


def _run_one(program: str, base_dir: str, options: dict, mode: str) -> SandboxResult:
    timeout = options["timeout"]
    separate_user = mode == "user"
    uid = sandbox_users.acquire_uid() if separate_user else None
    token = secrets.token_hex(16)
    proc = run_dir = work = stdlib_mount = None
    start = time.monotonic()
    try:
        run_dir = tempfile.mkdtemp(dir=base_dir)
        os.chmod(run_dir, 0o755)
        work = os.path.join(run_dir, "work")
        os.mkdir(work, 0o700)
        if separate_user and not _stdlib_world_readable():
            stdlib_mount = os.path.join(run_dir, "stdlib")
            os.mkdir(stdlib_mount, 0o755)
        Path(work, "program.py").write_text(program, encoding="utf-8", errors="surrogatepass")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "program.py"), uid, uid)
        config = _config(uid, stdlib_mount, **options)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(WORKER), json.dumps(config)], cwd=work,
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
        out, err, timed_out = read_until_exit(proc, token=f"{token}\n".encode(), deadline=start + timeout,
                                              on_exit=lambda: _kill_leftovers(proc, uid))
        duration = time.monotonic() - start
    except OSError as exc:
        return SandboxResult(False, "other", f"could not start the sandbox: {exc}", "", "", None,
                             time.monotonic() - start)
    finally:
        try:
            if proc is not None:
                sandbox_users.kill_group(proc.pid)
                proc.wait()
            if uid is not None:
                sandbox_users.release_uid(uid)  # kills anything left, by user id
        finally:
            if run_dir is not None:
                _remove(run_dir, work, stdlib_mount)
    stdout, passed_marker = out.text(strip_suffix=f"\n{token}\n")
    stderr, _ = err.text()
    if passed_marker and proc.returncode == 0 and not timed_out:
        return SandboxResult(True, "passed", "passed", stdout, stderr, 0, duration)
    status = classify_failure(stderr, proc.returncode, timed_out)
    return SandboxResult(False, status, _reason(status, stderr, proc.returncode, timeout), stdout, stderr,
                         proc.returncode, duration)


def _kill_leftovers(proc: subprocess.Popen, uid: int | None) -> None:
    """The main process has exited: kill what it left behind so the output pipes close."""
    sandbox_users.kill_group(proc.pid)
    if uid is not None:
        sandbox_users.kill_once(uid)


def _remove(run_dir: str, work: str | None, stdlib_mount: str | None) -> None:
    """Delete the run's directory. A mount point is only ever rmdir-ed, never recursed into."""
    if work:
        shutil.rmtree(work, ignore_errors=True)
    for path in (stdlib_mount, run_dir):
        if path:
            try:
                os.rmdir(path)
            except OSError as exc:
                log.warning("could not remove sandbox directory %s: %s", path, exc)


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none), which the worker uses to confine file writes."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    from prunescope.eval import sandbox_worker  # the same probe the worker runs before confining itself

    return sandbox_worker.landlock_abi(ctypes, ctypes.CDLL(None, use_errno=True))


@lru_cache(maxsize=1)
def _isolation_mode() -> str:
    """``user`` when root and a probe program runs fine under a separate user id; else ``process``:
    limits, namespaces where allowed and the guard, under the evaluator's own user."""
    if os.geteuid() != 0 or not hasattr(os, "setresuid"):
        if not landlock_abi():
            log.warning("sandbox: not running as root and this kernel has no Landlock, so model-written "
                        "programs run as your user with limits and a Python guard only; run evaluations "
                        "that execute code in a container or as root for full isolation")
        return "process"
    probe = "import hashlib, fractions, decimal\nassert hashlib.md5(b'').hexdigest()\n"
    result = _run_in_base([probe], dict(timeout=20.0, memory_mb=1024, max_processes=8, max_file_mb=1, guard=True),
                          mode="user", workers=1)[0]
    if result.passed:
        return "user"
    log.warning("sandbox: running programs under a separate user id failed (%s); falling back to "
                "limits and the guard only", result.reason)
    return "process"


def _run_in_base(programs: list[str], options: dict, *, mode: str, workers: int) -> list[SandboxResult]:
    base = tempfile.mkdtemp(prefix="prunescope-sandbox-")
    os.chmod(base, 0o755)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
            return list(pool.map(lambda program: _run_one(program, base, options, mode), programs))
    finally:
        try:
            os.rmdir(base)  # never rmtree: a leaked mount point below must not be recursed into
        except OSError as exc:
            log.warning("could not remove sandbox directory %s: %s", base, exc)


def run_programs(programs: list[str], *, timeout: float = 10.0, workers: int | None = None, memory_mb: int = 1024,
                 max_processes: int = 16, max_file_mb: int = 16, guard: bool = True) -> list[SandboxResult]:
    """Run each program in its own confined process, ``workers`` at a time (default: the CPU
    count), and return their results in input order. ``timeout`` is wall-clock seconds per program.
    Worst-case memory is ``workers * max_processes * memory_mb``. ``guard=False`` leaves Python's
    process/file/socket functions enabled (only to test the OS-level containment)."""
    if timeout <= 0 or memory_mb <= 0 or max_processes <= 0 or max_file_mb <= 0:
        raise ValueError("timeout, memory_mb, max_processes and max_file_mb must be positive")
    if not programs:
        return []
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    options = dict(timeout=timeout, memory_mb=memory_mb, max_processes=max_processes, max_file_mb=max_file_mb,
                   guard=guard)
    return _run_in_base(programs, options, mode=_isolation_mode(), workers=workers)


def run_program(program: str, **kwargs) -> SandboxResult:
    """Run one program; keyword arguments as for ``run_programs``."""
    return run_programs([program], **kwargs)[0]
