"""Bounded reading of a sandboxed process's output until it exits or its time is up.

A program may print gigabytes or hand its pipes to a child that never exits; this keeps the head
and the tail of each stream (the tail holds the traceback and the completion token) and stops at
the deadline whatever the program does.
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


def read_until_exit(proc: subprocess.Popen, *, token: bytes, deadline: float,
                    on_exit: Callable[[], None]) -> tuple[Capture, Capture, bool]:
    """Send ``token`` on stdin, then read stdout and stderr until both close or ``deadline``
    (monotonic) passes. ``on_exit`` runs once when the main process has exited but the pipes stay
    open, to kill whatever it left holding them. Returns the captures and whether the process was still running at the
    deadline."""
    try:
        proc.stdin.write(token)  # a few bytes: fits the pipe buffer, never blocks
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    out, err = Capture(), Capture()
    captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    exited_handled = False
    exited_at = None
    with selectors.DefaultSelector() as selector:
        for fd in captures:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(min(remaining, 0.05)):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if data:
                    captures[key.fd].add(data)
                else:
                    selector.unregister(key.fd)
            if exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
            if not exited_handled and exited_at is not None and time.monotonic() - exited_at > EXIT_GRACE:
                exited_handled = True  # something the program started still holds the pipes
                on_exit()
    proc.stdout.close()
    proc.stderr.close()
    try:  # the pipes may close (or be closed by the program) before the process ends
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return out, err, True
    return out, err, False
