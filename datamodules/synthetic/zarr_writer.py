"""Writes volumes and 2-D maps as Zarr (v2 or v3) arrays or OME-Zarr groups, atomically.

A volume arrives slice by slice (from the synthetic generator, or from TIFF slices being converted) and is
written one chunk-depth slab at a time, so at most ``chunks[0]`` slices are held, never the volume. Everything
goes to a temporary folder beside the target, renamed into place when complete: a crash leaves no half-written
``surface_volume.zarr`` that a reader would take for a whole one.

Default chunks, ``(8, 128, 128)``, suit the reads training makes. The loader reads ``tile x tile`` windows
(256 by default) over a range of 30-40 slices at random positions, and zarr's cost is per chunk (about 0.4 ms
each in zarr 3.1, whatever its size) plus the bytes decoded. 128-pixel rows and columns make a random 256 window
touch 3 x 3 chunks (2.25x its area; 256-pixel chunks touch 2 x 2, 4x), and a depth of 8 wastes at most a few
slices at the range's ends while a window needs 7x fewer chunks than with single-slice chunks. Measured on a
zstd-compressed 40 x 1024 x 1024 uint16 volume, 34 x 256 x 256 random windows through `Fragment.read` (2 shared
cores, so +-50%): ``(1, 128, 128)`` 74-78 ms, ``(8, 128, 128)`` 21-37 ms, ``(16, 128, 128)`` 16-42 ms; windows in
evaluation order (stride 64) 2.5 ms, from the chunk cache. Deeper chunks gain little and cost the writer: it
holds one chunk-depth slab, 8 slices (1 GiB at 8192 x 8192 uint16; pass thinner chunks to hold less). A chunk is
256 KiB of uint16, so a few hundred MiB of cache holds every chunk a row of overlapping evaluation windows shares.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from utils.atomic import replace_folder, temporary_sibling
from utils.pyramid import ome_multiscales

try:  # zarr 3 needs Python >= 3.11
    import zarr
except ImportError:  # pragma: no cover - only on Python 3.10 or without zarr
    zarr = None  # type: ignore[assignment]

DEFAULT_CHUNKS = (8, 128, 128)
ZARR_FORMATS = (2, 3)


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """`DEFAULT_CHUNKS` (the last ``len(shape)`` of them) clipped to ``shape``."""
    return tuple(min(c, s) for c, s in zip(DEFAULT_CHUNKS[-len(shape) :], shape))


def _create(
    folder: Path, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], zarr_format: int, ome: bool
) -> zarr.Array:
    if zarr is None:
        raise ImportError("writing zarr needs the zarr package (zarr>=3, Python >= 3.11): pip install 'zarr>=3,<4'")
    axes = ("z", "y", "x")[-len(shape) :]
    extra = {"dimension_names": axes} if zarr_format == 3 else {}
    if not ome:
        return zarr.create_array(str(folder), shape=shape, chunks=chunks, dtype=dtype, zarr_format=zarr_format, **extra)
    group = zarr.open_group(str(folder), mode="w", zarr_format=zarr_format)
    group.attrs.update(ome_multiscales(axes, zarr_format, name="volume" if len(axes) == 3 else "map"))
    return group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, **extra)


def _check(shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], zarr_format: int) -> None:
    if zarr_format not in ZARR_FORMATS:
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if dtype.name not in ("bool", "uint8", "uint16"):
        raise ValueError(f"dtype must be uint8 or uint16 (or bool for maps), got {dtype}")
    if len(chunks) != len(shape) or any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunks {tuple(chunks)} must give one positive size per axis of shape {shape}")


def write_zarr_volume(
    target: str | Path,
    planes: Iterable[np.ndarray],
    shape: tuple[int, int, int],
    dtype: str | np.dtype,
    *,
    chunks: tuple[int, int, int] | None = None,
    zarr_format: int = 3,
    ome: bool = False,
) -> Path:
    """Writes the ``[Z, H, W]`` volume whose slices ``planes`` yields (in file order) as ``target``.

    Args:
        target: the ``.zarr`` folder to write; replaced when complete if it exists.
        planes: ``Z`` arrays of shape ``(H, W)``; each may reuse the previous one's buffer (it is copied at once).
        shape: ``(Z, H, W)``.
        dtype: ``uint8`` or ``uint16``.
        chunks: chunk shape; default `default_chunks` (see the module docstring for why).
        zarr_format: 2 or 3.
        ome: write an OME-Zarr group (0.4 for v2, 0.5 for v3) whose level ``0`` is the array.

    Returns:
        ``target``.

    Raises:
        ValueError: a bad format, dtype or chunk shape, or ``planes`` yields the wrong number or shape of slices.
    """
    target, dtype = Path(target), np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    chunks = tuple(int(c) for c in (chunks or default_chunks(shape)))
    _check(shape, dtype, chunks, zarr_format)
    temp = temporary_sibling(target)
    try:
        array = _create(temp, shape, dtype, chunks, zarr_format, ome)
        slab = np.empty((min(chunks[0], shape[0]), *shape[1:]), dtype=dtype)
        count = 0
        for plane in planes:
            if count >= shape[0]:
                raise ValueError(f"more than {shape[0]} slices given for '{target}'")
            if plane.shape != shape[1:]:
                raise ValueError(f"slice {count} for '{target}' is {plane.shape}, expected {shape[1:]}")
            slab[count % len(slab)] = plane
            count += 1
            if count % len(slab) == 0 or count == shape[0]:
                filled = (count - 1) % len(slab) + 1
                array[count - filled : count] = slab[:filled]
        if count != shape[0]:
            raise ValueError(f"{count} slices given for '{target}', expected {shape[0]}")
        replace_folder(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def write_zarr_map(
    target: str | Path,
    image: np.ndarray,
    *,
    chunks: tuple[int, int] | None = None,
    zarr_format: int = 3,
    ome: bool = False,
) -> Path:
    """Writes a 2-D mask or label map (``(y, x)``, bool or 0/255 uint8) as ``target``, atomically.

    Args:
        target: the ``.zarr`` folder (``mask.zarr``, ``inklabels.zarr``).
        image: the map.
        chunks: chunk shape; default up to 1024 × 1024 (maps are read once, in bands of whole chunk rows).
        zarr_format: 2 or 3.
        ome: write an OME-Zarr group whose level ``0`` is the map.

    Returns:
        ``target``.
    """
    target, image = Path(target), np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a map is 2-D (y, x); got shape {image.shape} for '{target}'")
    chunks = tuple(int(c) for c in (chunks or tuple(min(1024, s) for s in image.shape)))
    _check(image.shape, image.dtype, chunks, zarr_format)
    temp = temporary_sibling(target)
    try:
        _create(temp, image.shape, image.dtype, chunks, zarr_format, ome)[...] = image
        replace_folder(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target
