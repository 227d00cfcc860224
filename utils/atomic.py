"""Atomic file writing: write under a temporary name in the target folder, then ``os.replace`` it into place.

A reader (or a crashed run) therefore sees either the previous file or the complete new one, never a
half-written file. Temporary files are named ``.<name>.<random>.tmp`` in the same folder (``os.replace`` is
atomic only within one file system) and are removed when writing fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path`` (``.<name>.<random>.tmp``) for a file or folder written in pieces."""
    return _tmp_name(Path(path))


def replace_folder(temp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Moves the finished folder ``temp`` to ``target``, replacing a folder already there.

    ``os.replace`` cannot replace a non-empty folder, so an old ``target`` is first renamed aside and removed after:
    a reader sees the old folder or the new one, and at worst, for an instant, neither.
    """
    temp, target = Path(temp), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{secrets.token_hex(6)}.old")
        os.replace(target, old)
    os.replace(temp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on normal exit the file written there replaces ``path``.

    For writers that take a file name (``PIL.Image.save``, ``torch.save``). The temporary name ends in
    ``.tmp``, so pass the format explicitly (e.g. ``image.save(tmp, format="PNG")``).

    Args:
        path: Final file path; its folder must exist.
        fsync: Flush the file to disk before renaming (so a power loss cannot leave an empty final file).

    Yields:
        The temporary path to write.

    Raises:
        FileNotFoundError: The body did not create the temporary file.
        Exception: Whatever the body raises; the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {final}: nothing was written to the temporary file {tmp}")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Opens a temporary file next to ``path`` for writing; on normal exit it is closed and replaces ``path``.

    Args:
        path: Final file path; its folder must exist.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: Text encoding (text mode only; default UTF-8).
        newline: As for `open` (text mode only).
        fsync: Flush the file to disk before renaming.

    Yields:
        The open file object.

    Raises:
        ValueError: A mode other than ``"w"`` / ``"wb"``.
        Exception: Whatever the body raises; the temporary file is removed and ``path`` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    final = Path(path)
    tmp = _tmp_name(final)
    # O_EXCL: never clobber another writer's temporary file; 0o666 lets the umask decide permissions, as for open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically and returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically (no newline translation) and returns ``path``."""
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Creates folder ``path`` (with parents) and checks that files can be created in it.

    Meant to run before any expensive work, so that a bad output location fails at once.

    Args:
        path: The folder.
        what: How error messages name the folder (e.g. ``"InkPredictionWriter output_dir"``).

    Returns:
        ``path`` as a `Path`.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is an existing non-folder.
        PermissionError: The folder cannot be created or written.
        OSError: Any other reason the folder cannot be created or written, with the folder named.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {str(folder)!r} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise NotADirectoryError(
            f"cannot create {what} {str(folder)!r}: a parent path is an existing file ({e.strerror}: {e.filename})"
        ) from e
    except PermissionError as e:
        raise PermissionError(f"cannot create {what} {str(folder)!r}: permission denied") from e
    except OSError as e:
        raise OSError(f"cannot create {what} {str(folder)!r}: {e.strerror or e}") from e
    probe = _tmp_name(folder / "write-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except PermissionError as e:
        raise PermissionError(f"{what} {str(folder)!r} is not writable: permission denied") from e
    except OSError as e:
        raise OSError(f"{what} {str(folder)!r} is not writable: {e.strerror or e}") from e
    finally:
        _remove_quietly(probe)
    return folder
