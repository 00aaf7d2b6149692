"""Atomic artifact writing: everything goes to a temporary path first and is renamed into place,
so an interrupted run never leaves a half-written file or folder behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from prunescope.errors import UsageError


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _umask_mode(0o666))  # mkstemp makes owner-only files; artifacts are for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    """Write an iterable of dicts as JSON lines, atomically."""
    return write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or malformed file into a UsageError that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file (the caller has checked that it exists), turning a syntax error into a
    UsageError that names the file and the line."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None


def check_out_dir(out: str | os.PathLike, *, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse a non-empty output folder unless ``overwrite`` is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} exists and is not a folder; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{flag} {out} is not empty; pass --overwrite to replace it or choose another folder")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on failure it is removed."""
    out = check_out_dir(out, overwrite=overwrite, flag=flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    share_tree(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def share_tree(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` the mode a plain ``open``/``mkdir`` would: libraries
    that write through a private temp file (transformers' safetensors shards, made 0600) otherwise leave
    files only their owner can read."""
    files, dirs = _umask_mode(0o666), _umask_mode(0o777)
    os.chmod(folder, dirs)
    for root, subdirs, names in os.walk(folder):
        for name in subdirs:
            os.chmod(os.path.join(root, name), dirs)
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, files)


def _umask_mode(mode: int) -> int:
    """``mode`` as a plain ``open``/``mkdir`` would create it under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
