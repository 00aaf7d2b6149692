"""Child side of the sandbox: confine this process, then run one program.

Started by ``prunescope.eval.sandbox`` as ``python -I -S -B sandbox_worker.py CONFIG_JSON`` in the
program's working directory, which holds ``program.py``; the first line of stdin is a random
completion token. The worker, in this order: moves into fresh network (and, when needed, mount)
namespaces, sets resource limits, confines file writes to its directory with Landlock where the
kernel has it, drops to an unprivileged user of its own, installs a guard that
disables process, signal, file-deletion and socket functions, and executes the program. The token is
written to stdout only when the program ran to its end, so ``os._exit(0)``, ``sys.exit(0)`` or a
killed process never count as passed.

Standalone on purpose (stdlib only, no prunescope imports): nothing of the evaluator is importable
from inside the sandbox.
"""
import builtins
import json
import os
import resource
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

# Landlock (Linux 5.13+; the same syscall numbers on every architecture) and its access rights.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
FS_MAKE_ANY = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14              # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1        # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# os/posix functions a test program never needs and a hostile one could use to escape or do harm.
BLOCKED_OS = (
    "kill", "killpg", "pidfd_open", "fork", "forkpty", "system", "popen",
    "execv", "execve", "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
    "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chflags", "lchflags",
    "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
    "setgroups", "setsid", "setpgid", "setpgrp", "plock",
)


def _blocked(name):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    blocked.__name__ = name.rsplit(".", 1)[-1]
    return blocked


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _count_user_threads(uid):
    """Threads (RLIMIT_NPROC counts threads) that ``uid`` runs now, for a relative process limit."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


def _isolate(libc, cfg):
    """New network namespace (no interfaces up, so no network); when the stdlib is unreadable to the
    sandbox user, also a private mount namespace with the stdlib bind-mounted where it can read it."""
    mount_target = cfg.get("stdlib_mount")
    if os.geteuid() != 0:
        if cfg.get("network_isolation"):
            libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # best effort: unprivileged user namespaces
        return
    flags = (CLONE_NEWNET if cfg.get("network_isolation") else 0) | (CLONE_NEWNS if mount_target else 0)
    if flags and libc.unshare(flags) != 0:
        raise OSError("unshare failed: the sandbox cannot isolate this process")
    if mount_target:
        stdlib = os.path.dirname(os.__file__)
        # Private first, so nothing mounted here can propagate back to the machine's namespace.
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError("cannot make the sandbox mount namespace private")
        if libc.mount(stdlib.encode(), mount_target.encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError("cannot bind-mount the standard library into the sandbox")
        libc.mount(None, mount_target.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        sys.path[:] = [mount_target + p[len(stdlib):] if p.startswith(stdlib) else p for p in sys.path]


def _limit(cfg):
    def set_limit(which, soft, hard=None):
        hard = soft if hard is None else hard
        resource.setrlimit(which, (soft, hard))

    set_limit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
    set_limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    set_limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    set_limit(resource.RLIMIT_CORE, 0)
    processes = cfg["max_processes"]
    if cfg.get("uid") is None and os.geteuid() != 0:
        processes += _count_user_threads(os.getuid())  # the limit counts all of this user's threads
    set_limit(resource.RLIMIT_NPROC, processes)
    set_limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)


def landlock_abi(ctypes, libc) -> int:
    """The kernel's Landlock ABI version; 0 when it has none or it is disabled."""
    return max(0, libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                               ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)))


def _confine_with_landlock(ctypes, libc):
    """Where the kernel has Landlock: files may be written, created or removed only beneath the
    working directory (and /dev/null written), TCP bind/connect is refused (ABI 4+) and so are signals
    and abstract sockets reaching outside the sandbox (ABI 6+). Needs no privileges, so it also
    protects the user's files when the evaluator does not run as root. Returns the ABI (0: none)."""
    abi = landlock_abi(ctypes, libc)
    if not abi:
        return 0
    fs = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_ANY
    fs |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # older kernels reject fields they do not know
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0  # compiled in but disabled at boot
    try:
        dev_null = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
        for path, allowed in ((os.getcwd(), fs), (os.devnull, dev_null)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = PathBeneath(allowed, fd)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock: cannot allow writes beneath {path}")
            finally:
                os.close(fd)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock: cannot restrict the sandbox process")
    finally:
        os.close(ruleset)
    return abi


def _drop_privileges(libc, cfg):
    uid = cfg.get("uid")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries can give privileges back
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # cleared by the uid change, so set after it


def _install_guard():
    """Disable what a test program never needs: processes, signals, deleting/renaming/chmod of files,
    sockets and ctypes. OS limits are the real containment; this catches the common cases early
    with a clear PermissionError."""
    import posix

    import _posixsubprocess
    import _socket
    for name in BLOCKED_OS:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _blocked(f"os.{name}"))
    _posixsubprocess.fork_exec = _blocked("subprocess")

    class BlockedSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")

    _socket.socket = _socket.SocketType = BlockedSocket
    for name in list(sys.modules):
        if name == "ctypes" or name.startswith(("ctypes.", "_ctypes")):
            del sys.modules[name]
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _report_exception(exc, write):
    try:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        sys.stderr.flush()
    except BaseException:
        write(2, f"\n{type(exc).__name__}: {exc}\n".encode("utf-8", "replace"))


def main():
    cfg = json.loads(sys.argv[1])
    token = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program reads an empty stdin
    os.close(devnull)
    write, exit_now = os.write, os._exit
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    ctypes, libc = _libc()
    _isolate(libc, cfg)
    with open("program.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    _limit(cfg)
    if cfg.get("landlock", True):
        _confine_with_landlock(ctypes, libc)
    _drop_privileges(libc, cfg)
    del ctypes, libc
    if cfg.get("guard", True):
        _install_guard()
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": builtins}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except SystemExit as exc:
        _flush()
        code = exc.code
        if code is not None and not isinstance(code, int):
            write(2, f"{code}\n".encode("utf-8", "replace"))
            code = 1
        exit_now(code or 0)  # no token: exiting early is not passing
    except BaseException as exc:
        _flush()
        _report_exception(exc, write)
        exit_now(1)
    _flush()
    write(1, f"\n{token}\n".encode())
    exit_now(0)


if __name__ == "__main__":
    main()
