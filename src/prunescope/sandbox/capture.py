"""Bounded reading of a sandboxed process's output and verdict until it exits or its time is up.

A program may print gigabytes or hand its pipes to a child that never exits; this keeps the head
and the tail of each stream (the tail holds the traceback) and stops at the deadline, or when a
budget is exceeded, whatever the program does.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Callable

HEAD_BYTES = 16_384
TAIL_BYTES = 8_192
EXIT_GRACE = 0.05  # seconds the pipes may stay open after the program exited
VERDICT_BYTES = 4096


class Capture:
    """The first ``HEAD_BYTES`` and last ``TAIL_BYTES`` of a byte stream, and its total size."""

    def __init__(self):
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[:-TAIL_BYTES]

    def text(self, strip_suffix: str | None = None) -> tuple[str, bool]:
        """The captured text (with an omission note when truncated) and whether the stream ended
        with ``strip_suffix``, which is removed from the text."""
        whole = self.total <= HEAD_BYTES + TAIL_BYTES
        data = bytes(self.head + self.tail)
        found = False
        if strip_suffix is not None:
            suffix = strip_suffix.encode()
            found = data.endswith(suffix) and self.total >= len(suffix)
            if found:
                data = data[:-len(suffix)]
        if whole:
            return data.decode("utf-8", "replace"), found
        omitted = self.total - len(data) - (len(strip_suffix) if found else 0)
        head = bytes(self.head).decode("utf-8", "replace")
        tail = data[len(self.head):].decode("utf-8", "replace")
        return f"{head}\n[... {omitted} bytes omitted ...]\n{tail}", found


class Clock:
    """The program's time limit, counted from when the sandbox is in place (the worker's first line on
    the verdict channel), not from the process start: setting up namespaces can stall for seconds on a
    busy kernel, and that is not the program's time. Setting up has its own allowance."""

    def __init__(self, timeout: float, setup_timeout: float):
        self.started = time.monotonic()
        self.timeout = timeout
        self.program_started: float | None = None
        self.deadline = self.started + setup_timeout

    def setup_done(self) -> None:
        if self.program_started is None:
            self.program_started = time.monotonic()
            self.deadline = self.program_started + self.timeout

    def expired(self) -> str:
        """Why the deadline passed: ``"timeout"`` once the program runs, ``"setup"`` before."""
        return "timeout" if self.program_started is not None else "setup"


def read_until_exit(proc: subprocess.Popen, *, nonce: bytes, verdict_fd: int, clock: Clock,
                    on_exit: Callable[[], None], watch: Callable[[], str | None],
                    watch_every: float = 0.1) -> tuple[Capture, Capture, bytes, str | None]:
    """Send ``nonce`` on stdin, then read stdout, stderr and the verdict channel until all close or
    ``clock``'s deadline passes (the program's limit starts at the verdict channel's first line).
    ``on_exit`` runs once when the main process has exited but the pipes stay open, to kill whatever
    it left holding them; ``watch`` runs every ``watch_every`` seconds and returns a reason to stop the
    program (a budget exceeded) or None. Returns the captures, the first ``VERDICT_BYTES`` of the
    verdict channel, and why the program was stopped (``"timeout"``, ``"setup"`` when the sandbox did
    not start in its allowance, the reason ``watch`` gave, or None)."""
    try:
        proc.stdin.write(nonce)  # a few bytes: fits the pipe buffer, never blocks
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    out, err, verdict = Capture(), Capture(), bytearray()
    captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    exited_handled = False
    exited_at = None
    stopped = None
    next_watch = time.monotonic() + watch_every
    with selectors.DefaultSelector() as selector:
        for fd in (*captures, verdict_fd):
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= clock.deadline:
                stopped = clock.expired()
                break
            if now >= next_watch:
                next_watch = now + watch_every
                stopped = watch()
                if stopped:
                    break
            for key, _ in selector.select(min(clock.deadline - now, 0.05)):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fd)
                elif key.fd == verdict_fd:
                    verdict += data[:max(0, VERDICT_BYTES - len(verdict))]
                    if b"\n" in verdict:
                        clock.setup_done()
                else:
                    captures[key.fd].add(data)
            if exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
            if not exited_handled and exited_at is not None and time.monotonic() - exited_at > EXIT_GRACE:
                exited_handled = True  # something the program started still holds the pipes
                on_exit()
    proc.stdout.close()
    proc.stderr.close()
    if stopped is None:
        try:  # the pipes may close (or be closed by the program) before the process ends
            proc.wait(timeout=max(0.0, clock.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stopped = clock.expired()
    return out, err, bytes(verdict), stopped
