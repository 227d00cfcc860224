"""A volume stored as numbered 2-D TIFF slices (``surface_volume/00.tif …``), memory-mapped where they lie.

Uncompressed, contiguous slices are memory-mapped in place; compressed or tiled slices are converted once,
slice by slice, to an uncompressed ``.npy`` cache that is then memory-mapped. The cache file name carries the
source's size and modification time, so a changed source is converted again, and every cache file is written
under a temporary name and renamed when complete. Maps are opened on first use in each process, so the volume
pickles to DataLoader workers and DDP processes without file handles.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from datamodules.reading.fragment_maps import save_npy

SLICE_DIRS = ("surface_volume", "layers")
_SLICE_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)
_SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))


def find_volume_dir(fragment_dir: Path) -> Path | None:
    """Returns the slice folder (``surface_volume/`` or ``layers/``) of a fragment folder, or None."""
    for name in SLICE_DIRS:
        if (fragment_dir / name).is_dir():
            return fragment_dir / name
    return None


def list_slices(volume_dir: Path) -> list[Path]:
    """Numbered slice files of a volume folder, sorted numerically (``0.tif``, ``00.tif``, ``000.tif`` …).

    Raises:
        FileNotFoundError: no numbered .tif file in the folder.
        ValueError: a gap or a duplicate in the numbering.
    """
    numbered: dict[int, Path] = {}
    for path in volume_dir.iterdir():
        match = _SLICE_NAME.match(path.name)
        if not match:
            continue
        index = int(match.group(1))
        if index in numbered:
            raise ValueError(f"slice {index} appears twice in '{volume_dir}': {numbered[index].name} and {path.name}")
        numbered[index] = path
    if not numbered:
        raise FileNotFoundError(f"no numbered .tif slice found in '{volume_dir}'")
    first, last = min(numbered), max(numbered)
    missing = [i for i in range(first, last + 1) if i not in numbered]
    if missing:
        raise ValueError(
            f"gap in slice numbering in '{volume_dir}': slice(s) {missing[:10]} missing between {first} and {last}"
        )
    return [numbered[i] for i in range(first, last + 1)]


@dataclass(frozen=True)
class SliceInfo:
    """What the TIFF header says about one slice."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    mappable: bool


def inspect_slice(path: Path) -> SliceInfo:
    """Reads one slice's header and checks that its pixel data is all there.

    Raises:
        ValueError: the file is not a readable 2-D TIFF, its dtype is unsupported, or it is truncated.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            dtype = np.dtype(series.dtype)
            page = tif.pages[0]
            offset = series.dataoffset
            mappable = offset is not None and page.compression == 1 and dtype.byteorder in ("=", "|", "<")
            if offset is not None and offset + series.size * dtype.itemsize > os.path.getsize(path):
                raise ValueError("file is shorter than its pixel data")
            if offset is None:
                # Compressed or tiled: check that every strip or tile lies inside the file.
                end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
                if end > os.path.getsize(path):
                    raise ValueError("file is shorter than its compressed strips")
    except ValueError as err:
        raise ValueError(f"unreadable or truncated TIFF slice '{path}': {err}") from err
    except Exception as err:  # tifffile raises several types for corrupt files
        raise ValueError(f"unreadable or truncated TIFF slice '{path}': {type(err).__name__}: {err}") from err
    if len(shape) != 2:
        raise ValueError(f"slice '{path}' has shape {shape}; expected a 2-D image")
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"slice '{path}' has dtype {dtype}; expected uint8 or uint16")
    return SliceInfo(path=path, shape=shape, dtype=dtype, mappable=bool(mappable))


class TiffVolume:
    """The slices of one slice folder as a lazy ``[Z, H, W]`` volume, indexed in file order.

    Args:
        volume_dir: the slice folder.
        cache_dir: where converted (compressed or tiled) slices go.

    Raises:
        ValueError / FileNotFoundError: naming the slice, for gaps, unreadable files or mismatched slices.
    """

    def __init__(self, volume_dir: Path, cache_dir: Path) -> None:
        self.source = volume_dir
        self.cache_dir = cache_dir
        self.slices = [inspect_slice(p) for p in list_slices(volume_dir)]
        first = self.slices[0]
        for info in self.slices[1:]:
            if info.shape != first.shape or info.dtype != first.dtype:
                raise ValueError(
                    f"slice '{info.path}' is {info.shape} {info.dtype} but '{first.path.name}' is "
                    f"{first.shape} {first.dtype}: all slices of a fragment must match"
                )
        self.shape: tuple[int, int, int] = (len(self.slices), *first.shape)
        self.dtype: np.dtype = first.dtype
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # maps are reopened lazily in each process
        return state

    @property
    def open_maps(self) -> dict[int, np.ndarray]:
        """The slices mapped in this process so far, by file index."""
        return self._maps

    def plane(self, index: int) -> np.ndarray:
        """File slice ``index`` as a read-only ``[H, W]`` memory map."""
        cached = self._maps.get(index)
        if cached is None:
            info = self.slices[index]
            try:
                cached = tifffile.memmap(info.path, mode="r") if info.mappable else self._cached_copy(info)
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot map slice '{info.path}': {err}") from err
            self._maps[index] = cached
        return cached

    def read_into(self, out: np.ndarray, first: int, y: int, x: int) -> None:
        """Fills ``out`` ``[n, h, w]`` with file slices ``first … first+n-1``, window ``(y, x)``; ``out`` may be a
        reversed view."""
        size_y, size_x = out.shape[1:]
        for i in range(out.shape[0]):
            out[i] = self.plane(first + i)[y : y + size_y, x : x + size_x]

    def version_key(self, indices: range) -> str:
        """Names, sizes and modification times of the slice files ``indices`` (keys caches derived from them)."""
        parts = []
        for index in indices:
            path = self.slices[index].path
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "".join(parts)

    def cache_path(self, info: SliceInfo) -> Path:
        """Where the uncompressed copy of a non-mappable slice lives (name tied to the source's size and mtime)."""
        stat = info.path.stat()
        return self.cache_dir / f"{info.path.stem}.{stat.st_size}-{stat.st_mtime_ns}.npy"

    def _cached_copy(self, info: SliceInfo) -> np.ndarray:
        target = self.cache_path(info)
        if not target.exists():
            self._convert(info, target)
        return np.load(target, mmap_mode="r")

    def _convert(self, info: SliceInfo, target: Path) -> None:
        try:
            data = tifffile.imread(info.path)  # one slice at a time, never the volume
        except Exception as err:
            raise ValueError(f"unreadable or truncated TIFF slice '{info.path}': {type(err).__name__}: {err}") from err
        if data.shape != info.shape:
            raise ValueError(f"slice '{info.path}' decoded to {data.shape}, header says {info.shape}")
        save_npy(target, np.asarray(data, dtype=info.dtype), stale=f"{info.path.stem}.*.npy")

    def prepare_cache(self, indices: range) -> int:
        """Converts the non-mappable slices among file ``indices`` in advance; returns how many were converted."""
        converted = 0
        for index in indices:
            info = self.slices[index]
            if not info.mappable and not self.cache_path(info).exists():
                self._convert(info, self.cache_path(info))
                converted += 1
        return converted
