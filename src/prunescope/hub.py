"""Talking to the Hugging Face hub politely when there may be no network.

Without this, a hub id on a machine with no network costs the hub client's retries with back-off
(up to a minute) and a screen of warnings before one error. Here a quick DNS look-up decides: when
the hub's host does not resolve, the call runs in the client's offline mode, so what is cached still
loads and anything else fails at once with one line.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Any, Iterator
from urllib.parse import urlparse

NO_NETWORK = "no network: the hub's host name does not resolve, and it is not in the local cache"


def hub_reachable() -> bool:
    """Whether the hub's host name (``$HF_ENDPOINT`` or huggingface.co) resolves."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def _offline_flags() -> list[Any]:
    """Modules whose ``HF_HUB_OFFLINE`` the hub clients read at call time (datasets only once imported)."""
    import huggingface_hub.constants

    modules = [huggingface_hub.constants]
    if "datasets.config" in sys.modules:
        modules.append(sys.modules["datasets.config"])
    return modules


@contextlib.contextmanager
def hub_access() -> Iterator[dict[str, Any]]:
    """Around a ``from_pretrained`` or ``load_dataset`` call: the hub client's per-retry warnings are
    silenced, and when the hub cannot be resolved the call runs offline (cache only). Yields a dict
    whose ``no_network`` says whether that happened (for ``hub_failure_reason``)."""
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    modules = _offline_flags()
    offline = [getattr(m, "HF_HUB_OFFLINE", False) for m in modules]
    state = {"no_network": False}
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if not all(offline) and not hub_reachable():
            state["no_network"] = True
            for m in modules:
                m.HF_HUB_OFFLINE = True
        yield state
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for m, value in zip(modules, offline):
            m.HF_HUB_OFFLINE = value


def hub_failure_reason(error: Exception, access: dict[str, Any] | None = None) -> str:
    """One short line on why something could not be fetched from the hub."""
    if access and access.get("no_network"):
        return NO_NETWORK
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
