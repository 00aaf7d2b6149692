"""Atomic artifact writing: nothing half-written, and files as shareable as a plain open() makes them."""
import os
import stat

import pytest

from prunescope.errors import UsageError
from prunescope.io import atomic_dir, read_json, write_json


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert read_json(path) == {"x": 1}


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        write_json(tmp_path / "b.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("k")
    with pytest.raises(UsageError, match="--overwrite"):
        with atomic_dir(tmp_path / "out"):
            pass
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
