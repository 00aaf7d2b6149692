"""Whether to draw progress bars: only where someone watches them.

A log file, CI or a job scheduler gets no carriage-return bars; ``--no-progress`` and ``--quiet`` (which
the command line passes on as tqdm's ``TQDM_DISABLE``) turn them off on a terminal too.
"""
from __future__ import annotations

import os
import sys


def bars_on() -> bool:
    """True when stderr is a terminal and bars were not turned off."""
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")
