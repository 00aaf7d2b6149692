"""Hostile programs against the sandbox: each one must leave the harness running, be recorded as failed
with the right class, change nothing outside its working directory and leave no process behind.

Most programs first undo the Python guard (``del sys.modules[...]`` and import again), so what stops
them is the OS layers and the audit hook, not the guard. The suite runs as this user (root here, with
every layer) and again, in a subprocess, as an unprivileged user (or, where the interpreter is not
reachable by one, as root stripped of every capability).
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

from prunescope.sandbox import isolation, layers, run_programs, users

ROOT = Path(__file__).resolve().parents[1]
WAKE = ("import sys, time\ndef wake_all(values):\n    for v in list(values.values()):\n"
        "        if type(v).__name__ == 'lock':\n            try:\n                v.release()\n"
        "            except Exception:\n                pass\n"
        "def wake(frame):\n    while frame is not None:\n        wake_all(frame.f_locals)\n"
        "        wake_all(frame.f_globals)\n        frame = frame.f_back\n"
        "class Evil:\n    def _grab(self, *args):\n        wake(sys._getframe(1))\n        return 'evil'\n"
        "    __format__ = __str__ = __repr__ = __eq__ = __hash__ = __fspath__ = _grab\n")
INNER = "PRUNESCOPE_HOSTILE_INNER"
MARKER = b"PRUNESCOPE_SANDBOX_RUN="
LIMITS = dict(timeout=6.0, workers=4, memory_mb=512, max_processes=8, max_file_mb=4, max_disk_mb=16, max_files=200)
# Undo the guard: modules imported again are fresh copies with the original functions.
UNGUARD = ("import sys\nfor _m in ('os', 'posix', '_socket', 'socket', '_posixsubprocess', 'subprocess'):\n"
           "    sys.modules.pop(_m, None)\nimport os, posix, _socket\n")


@pytest.fixture
def world():
    """What the programs attack: a directory with a precious and a secret file, a process that is not
    theirs, and TCP and UDP servers on 127.0.0.1 that record any contact."""
    path = tempfile.mkdtemp(prefix="prunescope-hostile-")
    os.chmod(path, 0o755)
    Path(path, "precious.txt").write_text("keep me")
    Path(path, "secret.txt").write_text("TOPSECRET-42")
    os.chmod(Path(path, "secret.txt"), 0o600)
    bystander = subprocess.Popen(["sleep", "120"])
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    contacts, stop = [], threading.Event()

    def listen():
        while not stop.is_set():
            for server, receive in ((tcp, tcp.accept), (udp, lambda: udp.recvfrom(100))):
                try:
                    contacts.append(receive())
                except OSError:
                    pass

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield {"dir": path, "bystander": bystander, "tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1],
           "contacts": contacts}
    stop.set()
    thread.join()
    tcp.close()
    udp.close()
    bystander.kill()
    bystander.wait()
    shutil.rmtree(path, ignore_errors=True)


def hostile_programs(w: dict) -> dict[str, tuple[str, str]]:
    """name -> (program, expected status)."""
    d, precious, secret = w["dir"], os.path.join(w["dir"], "precious.txt"), os.path.join(w["dir"], "secret.txt")
    # Look for the harness's nonce in every frame and object it can reach, then write it to every pipe.
    steal = ("import sys, gc, stat\nfound = []\ndef look(frame):\n    while frame is not None:\n"
             "        if isinstance(frame.f_locals.get('nonce'), bytes):\n            found.append(frame.f_locals['nonce'])\n"
             "        frame = frame.f_back\nlook(sys._getframe(0))\n"
             "for grab in (lambda: [look(f) for f in sys._current_frames().values()],\n"
             "             lambda: [found.append(o['nonce']) for o in gc.get_objects() if isinstance(o, dict)\n"
             "                      and isinstance(o.get('nonce'), bytes)]):\n"
             "    try:\n        grab()\n    except Exception as exc:\n        print('refused:', exc)\n")
    return {
        "forged pass": (UNGUARD + steal + "print(len(found), 'found')\nsys.stdout.flush()\n"
                        "for fd in range(3, 40):\n    try:\n        if found and stat.S_ISFIFO(posix.fstat(fd).st_mode):\n"
                        "            posix.write(fd, found[0])\n    except OSError:\n        pass\nposix._exit(0)\n",
                        "other"),
        "early os._exit(0)": ("def f(x):\n    return x\nimport os\nos._exit(0)\nassert f(1) == 2\n", "other"),
        "sys.exit(0) before the tests": ("def f(x):\n    return x\nimport sys\nsys.exit(0)\nassert f(1) == 2\n", "other"),
        # Release every lock it can reach (its own stack, the harness module, the audit hook's frame
        # in the traceback of a refused call, code of its own run inside the hook) and wait for the
        # harness to take that for the end of the program.
        "wake the harness": (WAKE + "wake(sys._getframe(0))\nwake_all(vars(sys.modules['__main__']))\n"
                             "try:\n    open('/proc/self/mem')\nexcept PermissionError as exc:\n"
                             "    tb = exc.__traceback__\n    while tb is not None:\n        wake(tb.tb_frame)\n"
                             "        tb = tb.tb_next\n"
                             "for event in ('import', 'open', 'prunescope.sandbox.done'):\n"
                             "    try:\n        sys.audit(event, Evil())\n    except Exception:\n        pass\n"
                             "time.sleep(1)\nimport os\nos._exit(0)\n", "other"),
        "fork bomb": (UNGUARD + "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n", "timeout"),
        "thread bomb": ("import threading, time\nwhile True:\n"
                        "    threading.Thread(target=time.sleep, args=(100,)).start()\n", "other"),
        "disk fill, many files": ("i = 0\nwhile True:\n    with open(f'f{i}', 'wb') as f:\n"
                                  "        f.write(b'x' * (1 << 20))\n    i += 1\n", "killed"),
        "disk fill, one big file": ("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
                                    "other"),
        "inode exhaustion": ("import os\nos.mkdir('d')\ni = 0\nwhile True:\n    open(f'd/{i}', 'w').close()\n    i += 1\n",
                             "killed"),
        "TCP": (UNGUARD + f"s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.settimeout(2)\n"
                f"s.connect(('127.0.0.1', {w['tcp']}))\n", "other"),
        "UDP": (UNGUARD + f"s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
                f"s.sendto(b'hello', ('127.0.0.1', {w['udp']}))\n", "other"),
        "raw socket": (UNGUARD + "s = _socket.socket(_socket.AF_PACKET, _socket.SOCK_RAW, 0x0300)\n", "other"),
        "DNS look-up": (UNGUARD + "print(_socket.getaddrinfo('example.com', 80))\n", "other"),
        "read ~/.ssh and the project": (f"import os\nprint(open({secret!r}).read())\n"
                                        f"print(open({str(ROOT / 'pyproject.toml')!r}).read())\n"
                                        "print(os.listdir(os.path.expanduser('~root/.ssh')))\n", "other"),
        "write outside": (UNGUARD + f"open({os.path.join(d, 'new.txt')!r}, 'w').write('x')\n"
                          f"posix.unlink({precious!r})\n", "other"),
        "signal the parent": (UNGUARD + f"posix.kill({w['bystander'].pid}, 9)\nposix.kill(posix.getppid(), 0)\n",
                              "other"),
        "ptrace": (UNGUARD + "for m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\n"
                   "import _ctypes\n", "other"),
        "setsid daemon": (UNGUARD + "try:\n    child = posix.fork()\nexcept OSError:\n    child = 1  # refused when still root\n"
                          "if child == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
                          "        import time\n        time.sleep(600)\n    posix._exit(0)\n"
                          "import time\ntime.sleep(0.3)\nassert False\n", "assertion"),
        "/proc/self escapes": (f"import os\nfor path in ('/proc/self/mem', '/dev/fd/../mem', '/proc/self/root{precious}',"
                               f" '/proc/thread-self/environ'):\n    try:\n        open(path, 'r+b')\n"
                               "        print('opened', path)\n    except OSError as exc:\n        print(exc)\n"
                               "open('/proc/self/mem', 'rb')\n", "other"),
        "ctypes syscalls": ("import sys\nsys.modules.pop('ctypes', None)\nsys.modules.pop('_ctypes', None)\n"
                            "import ctypes\nctypes.CDLL(None).syscall(62, 1, 9)\n", "other"),
        "del sys.modules, then exec": (UNGUARD + f"posix.execv('/bin/sh', ['sh', '-c', 'rm -f {precious}'])\n", "other"),
        "infinite stdout": ("while True:\n    print('x' * 10000)\n", "timeout"),
        "recursion bomb": ("def f(n):\n    return f(n + 1) + 1\nf(0)\n", "other"),
    }


def sandbox_processes(grace: float = 3.0) -> list[str]:
    """Every live process that carries a sandbox run's marker, with its state, once those killed
    a moment ago had ``grace`` seconds to finish dying."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if MARKER in Path(f"/proc/{entry}/environ").read_bytes():
                        state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                        found.append(f"{entry} ({state}, uid {os.stat(f'/proc/{entry}').st_uid})")
                except (OSError, IndexError):
                    pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def snapshot(path: str) -> dict:
    return {p.name: (p.stat().st_mode, p.read_bytes()) for p in Path(path).iterdir()}


# What contains each attack at the OS level (any one layer suffices); with none of them on a host,
# nothing can, and the program is left out there (with a warning) rather than passed.
NEEDS = {"read ~/.ssh and the project": {"uid", "landlock"}, "write outside": {"uid", "landlock"},
         "signal the parent": {"uid", "landlock", "seccomp"}, "TCP": {"netns", "landlock", "seccomp"},
         "UDP": {"netns", "seccomp"}, "raw socket": {"uid", "seccomp"},
         "del sys.modules, then exec": {"uid", "landlock", "seccomp"}}


def test_hostile_programs(world):
    programs = hostile_programs(world)
    assert len(programs) >= 20
    applied = {layer for layer, on in isolation().items() if layer in layers.LAYERS and on}
    uncontained = [name for name, needs in NEEDS.items() if not needs & applied]
    if uncontained:
        warnings.warn(f"this host has no layer that contains: {', '.join(uncontained)}")
        programs = {name: value for name, value in programs.items() if name not in uncontained}
    before, project_before = snapshot(world["dir"]), sorted(os.listdir(ROOT))
    start = time.monotonic()
    results = run_programs([p for p, _ in programs.values()], **LIMITS)
    elapsed = time.monotonic() - start
    # Among these CPU, thread and disk hogs a host kernel may stall a process's exit for seconds (seen
    # about once in 25 runs: a program that sleeps 1 s and calls os._exit ends 5-10 s later). A timeout
    # where another status was due is therefore run again alone, once; a pass is never forgiven.
    for i, ((_, (program, expected)), r) in enumerate(zip(programs.items(), results)):
        if r.status == "timeout" and expected != "timeout" and not r.passed:
            results[i] = run_programs([program], **LIMITS)[0]
    wrong = {name: (r.status, r.reason) for (name, (_, expected)), r in zip(programs.items(), results)
             if r.passed or r.status != expected}
    assert not wrong, wrong
    assert all(r.reason and "\n" not in r.reason for r in results)
    by_name = dict(zip(programs, results))
    if "read ~/.ssh and the project" in by_name:
        assert "TOPSECRET" not in by_name["read ~/.ssh and the project"].stdout
        assert "prunescope" not in by_name["read ~/.ssh and the project"].stdout
    assert "opened" not in by_name["/proc/self escapes"].stdout
    assert len(by_name["infinite stdout"].stdout) < 64_000  # truncated, not accumulated
    assert "File too large" in by_name["disk fill, one big file"].reason
    assert "MB" in by_name["disk fill, many files"].reason and "files" in by_name["inode exhaustion"].reason
    assert snapshot(world["dir"]) == before and sorted(os.listdir(ROOT)) == project_before
    assert world["bystander"].poll() is None and not world["contacts"]
    assert not sandbox_processes()
    assert not users._in_use
    assert elapsed < 60


def test_memory_balloons_fail_as_memory():
    """Apart from the CPU hogs above: a slow allocation loop starved of CPU would time out first."""
    programs = ["x = bytearray(8 * 1024 ** 3)\n", "x = []\nwhile True:\n    x.append(' ' * 10 ** 7)\n"]
    results = run_programs(programs, **{**LIMITS, "timeout": 30.0, "workers": 2})
    assert [(r.status, "MemoryError" in r.reason) for r in results] == [("memory", True)] * 2


def test_budgets_are_sized_from_the_machine():
    assert layers.plan_workers(64, memory_mb=1 << 20, max_processes=1, disk_mb=1, base_dir="/tmp") == 1
    assert layers.plan_workers(64, memory_mb=1, max_processes=1, disk_mb=1 << 30, base_dir="/tmp") == 1
    free_mb = layers._mem_available_mb()
    assert layers.plan_workers(64, memory_mb=free_mb // 8, max_processes=1, disk_mb=1, base_dir="/tmp") <= 4


def _unprivileged_prefix() -> list[str] | None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    for prefix in (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"],
                   ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]):
        check = ("import pytest, subprocess, sys\n"  # the sandbox starts this same interpreter again
                 "sys.exit(subprocess.run([sys.executable, '-I', '-S', '-c', 'import os']).returncode)")
        if subprocess.run([*prefix, sys.executable, "-c", check], capture_output=True).returncode == 0:
            return prefix
    return None


@pytest.mark.skipif(os.environ.get(INNER) == "1", reason="already the unprivileged run")
def test_hostile_programs_as_an_unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("this run is already unprivileged")
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("cannot drop privileges here")
    env = {**os.environ, INNER: "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", __file__,
                           "-k", "test_hostile_programs and not unprivileged"], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "1 passed" in proc.stdout
