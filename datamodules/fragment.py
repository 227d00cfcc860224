"""A fragment on disk: a lazy, memory-mapped ``[Z, H, W]`` volume with its papyrus mask and ink labels.

Nothing here loads a volume into RAM. Uncompressed, contiguous slices are memory-mapped where they lie;
compressed or tiled slices are converted once, slice by slice, to an uncompressed ``.npy`` cache that is
then memory-mapped. The cache file name carries the source's size and modification time, so a changed
source is converted again, and every cache file is written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from datamodules.fragment_maps import binary_cache, ignore_cache, save_npy
from utils.layout import to_channels_last

SLICE_DIRS = ("surface_volume", "layers")
_SLICE_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)
_SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))

# Default slice range [15, 45): 30 slices around the middle of the 65, covering the ranges the
# competition's winners found best (24-39, 17-42, 18-45) with room for the surface's wobble in depth.
DEFAULT_Z_START = 15
DEFAULT_Z_END = 45


def find_volume_dir(fragment_dir: Path) -> Path | None:
    """Returns the slice folder (``surface_volume/`` or ``layers/``) of a fragment folder, or None."""
    for name in SLICE_DIRS:
        if (fragment_dir / name).is_dir():
            return fragment_dir / name
    return None


def discover_fragments(data_dir: str | Path) -> list[Path]:
    """Lists the fragment folders under ``data_dir``, sorted by name.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no fragment.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir '{root}' does not exist or is not a folder")
    found = sorted(p for p in root.iterdir() if p.is_dir() and find_volume_dir(p) is not None)
    if not found:
        raise FileNotFoundError(
            f"no fragment found in data_dir '{root}': expected sub-folders holding "
            f"{' or '.join(s + '/' for s in SLICE_DIRS)} with numbered .tif slices"
        )
    return found


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


class Fragment:
    """One fragment: a lazy ``[Z, H, W]`` volume, its mask and (optional) ink labels.

    Slices are opened on first read in each process, so a Fragment pickles to DataLoader workers and DDP
    processes without file handles or maps.

    Args:
        path: the fragment folder.
        z_start: first slice of the range the model sees (in depth order after ``reverse_depth``).
        z_end: one past the last slice of that range.
        reverse_depth: the fragment is stored with its depth order reversed; slice ``z`` is read from
            file ``Z-1-z``.
        cache_dir: where converted (compressed or tiled) slices go; default ``<fragment>/.ink_cache``.
        require_labels: raise if ``inklabels.png`` is missing.

    Raises:
        ValueError / FileNotFoundError: with the file or setting named, for every inconsistency.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        z_start: int = DEFAULT_Z_START,
        z_end: int = DEFAULT_Z_END,
        reverse_depth: bool = False,
        cache_dir: str | Path | None = None,
        require_labels: bool = False,
    ) -> None:
        self.path = Path(path)
        self.id = self.path.name
        volume_dir = find_volume_dir(self.path)
        if volume_dir is None:
            raise FileNotFoundError(f"fragment '{self.path}' has no {' or '.join(SLICE_DIRS)} folder")
        self.slices = [inspect_slice(p) for p in list_slices(volume_dir)]
        first = self.slices[0]
        for info in self.slices[1:]:
            if info.shape != first.shape or info.dtype != first.dtype:
                raise ValueError(
                    f"slice '{info.path}' is {info.shape} {info.dtype} but '{first.path.name}' is "
                    f"{first.shape} {first.dtype}: all slices of a fragment must match"
                )
        self.depth = len(self.slices)
        self.height, self.width = first.shape
        self.dtype = first.dtype
        if not 0 <= z_start < z_end:
            raise ValueError(f"z_start={z_start}, z_end={z_end}: need 0 <= z_start < z_end")
        if z_end > self.depth:
            raise ValueError(
                f"z_end={z_end} is beyond the last slice of fragment '{self.id}' "
                f"({self.depth} slices, 0..{self.depth - 1})"
            )
        self.z_start, self.z_end = z_start, z_end
        self.reverse_depth = reverse_depth
        self.cache_dir = Path(cache_dir) / self.id if cache_dir is not None else self.path / ".ink_cache"
        self._maps: dict[object, np.ndarray] = {}
        # (lo, hi) raw values mapped to 0 and 1 by the model's input normalisation; None: the dtype's range.
        self.intensity: tuple[float, float] | None = None

        # Mask and labels are memory-mapped .npy caches like the slices (see datamodules/fragment_maps.py).
        shape = (self.height, self.width)
        mask_path = self.path / "mask.png"
        self._mask_file = binary_cache(mask_path, self.cache_dir, shape, "mask") if mask_path.exists() else None
        label_path = self.path / "inklabels.png"
        if label_path.exists():
            self._labels_file: Path | None = binary_cache(label_path, self.cache_dir, shape, "ink labels")
        elif require_labels:
            raise FileNotFoundError(f"fragment '{self.id}' has no ink labels: '{label_path}' is missing")
        else:
            self._labels_file = None
        self._ignore_file = ignore_cache(label_path, self.path / "ignore.png", self.cache_dir, shape)

    @property
    def mask(self) -> np.ndarray:
        """Papyrus mask, bool ``[H, W]`` (memory-mapped; all True when the fragment has no mask.png)."""
        if self._mask_file is None:
            return np.broadcast_to(np.True_, (self.height, self.width))
        return self._open_npy(self._mask_file)

    @property
    def labels(self) -> np.ndarray | None:
        """Ink labels, bool ``[H, W]`` (memory-mapped), or None when the fragment has no inklabels.png."""
        return None if self._labels_file is None else self._open_npy(self._labels_file)

    @property
    def ignore(self) -> np.ndarray | None:
        """Pixels left out of the loss and the metric, bool ``[H, W]`` (memory-mapped), or None.

        The union of ``ignore.png`` (0/255) and the label pixels valued 127 ("unknown"): real labels are drawn
        loosely, and uncertain regions are better left unscored than counted as ink or as papyrus.
        """
        return None if self._ignore_file is None else self._open_npy(self._ignore_file)

    def _open_npy(self, path: Path) -> np.ndarray:
        cached = self._maps.get(path)
        if cached is None:
            cached = self._maps[path] = np.load(path, mmap_mode="r")
        return cached

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, H, W)`` of the whole stored volume."""
        return self.depth, self.height, self.width

    @property
    def num_slices(self) -> int:
        """Depth of the selected range ``z_end - z_start``."""
        return self.z_end - self.z_start

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # maps are reopened lazily in each process
        return state

    def _file_index(self, z: int) -> int:
        return self.depth - 1 - z if self.reverse_depth else z

    def slice_info(self, z: int) -> SliceInfo:
        """The file behind slice ``z`` (depth order after ``reverse_depth``)."""
        return self.slices[self._file_index(z)]

    def _map(self, z: int) -> np.ndarray:
        index = self._file_index(z)
        cached = self._maps.get(index)
        if cached is None:
            info = self.slices[index]
            try:
                cached = tifffile.memmap(info.path, mode="r") if info.mappable else self._cached_copy(info)
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot map slice '{info.path}': {err}") from err
            self._maps[index] = cached
        return cached

    def plane(self, z: int) -> np.ndarray:
        """Slice ``z`` (depth order after ``reverse_depth``) as a read-only ``[H, W]`` memory map."""
        if not 0 <= z < self.depth:
            raise ValueError(f"slice {z} outside fragment '{self.id}' (0..{self.depth - 1})")
        return self._map(z)

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

    def prepare_cache(self, z0: int = 0, z1: int | None = None) -> int:
        """Converts the non-mappable slices of ``[z0, z1)`` in advance; returns how many were converted."""
        converted = 0
        for z in range(max(0, z0), min(self.depth, self.depth if z1 is None else z1)):
            info = self.slice_info(z)
            if not info.mappable and not self.cache_path(info).exists():
                self._convert(info, self.cache_path(info))
                converted += 1
        return converted

    def read(
        self, z0: int, z1: int, y: int, x: int, size_y: int, size_x: int, *, channels_last: bool = True
    ) -> np.ndarray:
        """Copies ``volume[z0:z1, y:y+size_y, x:x+size_x]`` out of the maps; only the window is read.

        Returns an ``[size_y, size_x, z1-z0]`` array (albumentations works on ``H x W x C`` images), or with
        ``channels_last=False`` the ``[z1-z0, size_y, size_x]`` array the model takes. Slices are copied into
        ``[D, H, W]`` (contiguous rows) and, for ``H x W x C``, changed in one transpose.
        """
        if not (0 <= z0 < z1 <= self.depth):
            raise ValueError(f"depth range [{z0}, {z1}) outside fragment '{self.id}' (0..{self.depth})")
        if y < 0 or x < 0 or y + size_y > self.height or x + size_x > self.width:
            raise ValueError(
                f"window y={y}, x={x}, {size_y}x{size_x} outside fragment '{self.id}' ({self.height}x{self.width})"
            )
        out = np.empty((z1 - z0, size_y, size_x), dtype=self.dtype)
        for i, z in enumerate(range(z0, z1)):
            out[i] = self._map(z)[y : y + size_y, x : x + size_x]
        return to_channels_last(out) if channels_last else out

    def __repr__(self) -> str:
        return (
            f"Fragment('{self.id}', {self.depth}x{self.height}x{self.width} {self.dtype}, "
            f"z=[{self.z_start},{self.z_end}), labels={'yes' if self.labels is not None else 'no'})"
        )
