"""A fragment's 2-D maps (papyrus mask, ink labels, ignore map): read from PNG, checked, cached as ``.npy``.

A real fragment's maps are 141 MB each; read into every DataLoader worker they would multiply that by the
worker count. So each PNG is read and checked once per version (the cache name carries its size and
modification time), written as an uncompressed ``.npy`` that the fragment then memory-maps like its slices.
The atomic ``.npy`` writer here also serves the fragment's converted slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from utils.atomic import atomic_open


def read_binary_png(path: Path, shape: tuple[int, int], what: str, *, unknown: int | None = None) -> np.ndarray:
    """Reads a mask or label PNG as a bool array, accepting 0/255 or 0/1 values.

    Args:
        path: the PNG.
        shape: the volume's ``(H, W)``.
        what: what the file is, for error messages.
        unknown: a value also accepted, meaning "unknown" (labels: 127); such pixels read as False.

    Raises:
        ValueError: unreadable file, size other than ``shape`` or values that are not binary.
    """
    array = _read_png(path, shape, what)
    if array.dtype == bool:
        return array
    values = set(np.unique(array).tolist())
    allowed = ({0, 255}, {0, 1}) if unknown is None else ({0, 255, unknown}, {0, 1, unknown})
    if not any(values <= ok for ok in allowed):
        shown = sorted(values)[:8]
        extra = "" if unknown is None else f", with {unknown} for unknown"
        raise ValueError(f"{what} '{path}' is not binary: values {shown}; expected 0/255 or 0/1{extra}")
    return (array > 0) & (array != unknown) if unknown is not None else array > 0


def read_unknown_labels(path: Path, shape: tuple[int, int], value: int = 127) -> np.ndarray | None:
    """Pixels of a label PNG marked unknown (``value``), or None when there are none."""
    array = _read_png(path, shape, "ink labels")
    if array.dtype == bool:
        return None
    unknown = array == value
    return unknown if unknown.any() else None


def _read_png(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # real masks exceed Pillow's bomb guard
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except Exception as err:
        raise ValueError(f"{what} '{path}' cannot be read as an image: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != shape:
        raise ValueError(
            f"{what} '{path}' is {array.shape[1]}x{array.shape[0]} (W x H) but the volume's slices are "
            f"{shape[1]}x{shape[0]}"
        )
    return array


def binary_cache(png: Path, cache_dir: Path, shape: tuple[int, int], what: str) -> Path:
    """The ``.npy`` copy of a mask or label PNG, made (and checked) once per version of the PNG.

    Args:
        png: ``mask.png`` or ``inklabels.png`` (whose 127 pixels mean "unknown" and read as False).
        cache_dir: the fragment's cache folder.
        shape: the volume's ``(H, W)``.
        what: what the file is, for error messages.

    Returns:
        The cache file, a bool ``[H, W]`` array.

    Raises:
        ValueError: see `read_binary_png`.
    """
    stat = png.stat()
    target = cache_dir / f"{png.stem}.{stat.st_size}-{stat.st_mtime_ns}.npy"
    if not target.exists():
        unknown = 127 if png.name == "inklabels.png" else None
        array = read_binary_png(png, shape, what, unknown=unknown)
        save_npy(target, array, stale=f"{png.stem}.*.npy")
    return target


def ignore_cache(label_path: Path, ignore_path: Path, cache_dir: Path, shape: tuple[int, int]) -> Path | None:
    """The ``.npy`` cache of the pixels left unscored: ``ignore.png`` and the labels' unknown (127) pixels.

    A ``.none`` marker records that a version of the sources has no such pixel, so it is not read again.

    Args:
        label_path: the fragment's ``inklabels.png`` (may be missing).
        ignore_path: the fragment's ``ignore.png`` (may be missing).
        cache_dir: the fragment's cache folder.
        shape: the volume's ``(H, W)``.

    Returns:
        The cache file, a bool ``[H, W]`` array, or None when no pixel is ignored.

    Raises:
        ValueError: see `read_binary_png`.
    """
    sources = [p for p in (label_path, ignore_path) if p.exists()]
    if not sources:
        return None
    stamp = "-".join(f"{p.stat().st_size}-{p.stat().st_mtime_ns}" for p in sources)
    target = cache_dir / f"ignore.{stamp}.npy"
    none_marker = cache_dir / f"ignore.{stamp}.none"
    if none_marker.exists():
        return None
    if not target.exists():
        ignore = read_unknown_labels(label_path, shape) if label_path.exists() else None
        if ignore_path.exists():
            extra = read_binary_png(ignore_path, shape, "ignore mask")
            ignore = extra if ignore is None else ignore | extra
        if ignore is None or not ignore.any():
            cache_dir.mkdir(parents=True, exist_ok=True)
            for old in cache_dir.glob("ignore.*"):
                old.unlink(missing_ok=True)
            none_marker.touch()
            return None
        save_npy(target, ignore, stale="ignore.*")
    return target


def save_npy(target: Path, array: np.ndarray, *, stale: str) -> None:
    """Writes ``array`` as ``target`` (.npy) atomically, and removes the older versions matching ``stale``.

    Args:
        target: the ``.npy`` file; its folder is created if missing.
        array: what to store (written C-contiguous).
        stale: glob pattern, in ``target``'s folder, of the copies made from earlier versions of the source.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob(stale):
        if old != target:
            old.unlink(missing_ok=True)  # the source changed since this copy was made
    with atomic_open(target, "wb", fsync=False) as handle:
        np.save(handle, np.ascontiguousarray(array))
