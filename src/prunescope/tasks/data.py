"""Reading task data: local JSONL files (errors name the file and line) and hub datasets (errors say
how to pass a local file instead when the hub cannot be reached)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from prunescope.errors import UsageError


def read_jsonl(path: str | Path, *, required: tuple[str, ...] = (), flag: str = "--data") -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file, a bad line or a row without a ``required`` key is a
    UsageError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file; check the path (JSONL, one object per line)")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise UsageError(f"{path} line {lineno}: missing key(s) {', '.join(map(repr, missing))}; "
                                 f"each line needs {', '.join(map(repr, required))}")
            rows.append(row)
    if not rows:
        raise UsageError(f"{path} has no rows")
    return rows


def load_hub(path: str, name: str | None, split: str, *, how_to_fix: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset split via ``datasets``; not installed or not reachable -> UsageError
    ending with ``how_to_fix``."""
    try:
        import datasets
    except ImportError:
        raise UsageError(f"the hub dataset {path} needs the 'datasets' package (pip install datasets); "
                         f"or {how_to_fix}") from None
    access = None
    try:
        with hub_access() as access:
            ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # offline, no such dataset, no access: all are the user's to fix
        reason = hub_failure_reason(e, access)
        raise UsageError(f"dataset {path} ({split}) is not reachable ({reason}); {how_to_fix}") from None
    return [dict(r) for r in ds]


def hub_reachable() -> bool:
    """Whether the hub's host name (``$HF_ENDPOINT`` or huggingface.co) resolves; a quick DNS look-up
    instead of the hub client's retries with back-off when there is no network at all."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return False
    return True


@contextlib.contextmanager
def hub_access() -> Iterator[dict[str, Any]]:
    """Around a ``datasets.load_dataset`` call: the hub client's per-retry warnings are silenced (a
    failure becomes one UsageError), and when the hub cannot be resolved the call runs in offline
    mode, so a cached dataset still loads and a missing one fails at once. Yields a dict whose
    ``no_network`` says whether that happened (for ``hub_failure_reason``)."""
    import datasets.config
    import huggingface_hub.constants

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    flags = (huggingface_hub.constants, datasets.config)
    offline = [getattr(m, "HF_HUB_OFFLINE", False) for m in flags]
    state = {"no_network": False}
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if not any(offline) and not hub_reachable():
            state["no_network"] = True
            for m in flags:
                m.HF_HUB_OFFLINE = True
        yield state
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for m, value in zip(flags, offline):
            m.HF_HUB_OFFLINE = value


def hub_failure_reason(error: Exception, access: dict[str, Any] | None = None) -> str:
    """One short line on why a hub dataset could not be loaded."""
    if access and access.get("no_network"):
        return "no network: the hub's host name does not resolve, and the dataset is not in the local cache"
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
