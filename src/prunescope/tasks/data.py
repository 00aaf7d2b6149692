"""Reading task data: local JSONL files (errors name the file and line) and hub datasets (errors say
how to pass a local file instead when the hub cannot be reached)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.hub import hub_access, hub_failure_reason


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

