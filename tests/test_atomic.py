"""utils/atomic.py: whole files or nothing, umask permissions, writable-folder checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, ensure_writable_dir


def test_atomic_helpers_replace_whole_files_or_leave_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o044  # umask permissions, not mkstemp's 0600
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(NotADirectoryError, match="out.txt"):
        ensure_writable_dir(target)
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()


def test_atomic_open_writes_bytes_and_rejects_other_modes(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target and target.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"), atomic_open(target, "a"):
        pass
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"\x00\x01" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]
